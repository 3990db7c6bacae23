//! The Lua scripts that make each multi-key change one atomic step, and the
//! `EVALSHA` call that loads a script on a node that does not have it yet.

use ::redis::{Cmd, ErrorKind, RedisResult, Script, ServerErrorKind};

use super::connect::Conn;

const ROTATE_LUA: &str = include_str!("../rotate.lua");
const INDEX_ADD_LUA: &str = include_str!("../index_add.lua");
const REVOKE_LUA: &str = include_str!("../revoke.lua");
const ADOPT_LUA: &str = include_str!("../adopt.lua");

/// The store's scripts, hashed once.
pub(super) struct Scripts {
    pub(super) rotate: Script,
    pub(super) index_add: Script,
    pub(super) revoke: Script,
    pub(super) adopt: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            rotate: Script::new(ROTATE_LUA),
            index_add: Script::new(INDEX_ADD_LUA),
            revoke: Script::new(REVOKE_LUA),
            adopt: Script::new(ADOPT_LUA),
        }
    }
}

/// Runs an `EVALSHA` of `script`, loading the script first when the node
/// does not have it yet (or flushed it).
pub(super) async fn eval_sha(
    mut c: Conn,
    call: &Cmd,
    script: &Script,
) -> RedisResult<Vec<Vec<u8>>> {
    match call.query_async(&mut c).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(&mut c).await?;
            call.query_async(&mut c).await
        }
        other => other,
    }
}
