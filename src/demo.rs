//! The built-in demo upstream behind `sis-gateway demo`.
