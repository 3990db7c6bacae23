//! Access JWTs and sealed refresh tokens.
