//! `[admin]`: the bearer token of the admin API.

use super::raw::RawAdmin;
use super::{Secret, Validator};

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*`; `None` turns the admin API off.
    pub token: Option<Secret>,
}

impl Validator {
    pub(super) fn admin(&mut self, raw: RawAdmin) -> AdminConfig {
        AdminConfig {
            token: raw.token.and_then(|t| match Secret::resolve(&t) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.problem("admin.token", e);
                    None
                }
            }),
        }
    }
}
