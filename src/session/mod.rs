//! Sessions, rotation rules and the store trait.
