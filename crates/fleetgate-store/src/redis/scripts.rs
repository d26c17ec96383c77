//! The Lua scripts, loaded once per connection and called by SHA (EVALSHA).

use redis::Script;

/// Every script the driver runs, compiled in so a deployment cannot drift from the code.
pub(super) struct Scripts {
    pub gcra: Script,
    pub sliding_window: Script,
    pub fixed_window: Script,
    pub acquire_permit: Script,
    pub release_permit: Script,
    pub claim: Script,
    pub lock: Script,
    pub unlock: Script,
}

const SOURCES: [&str; 8] = [
    include_str!("scripts/gcra.lua"),
    include_str!("scripts/sliding_window.lua"),
    include_str!("scripts/fixed_window.lua"),
    include_str!("scripts/acquire_permit.lua"),
    include_str!("scripts/release_permit.lua"),
    include_str!("scripts/claim.lua"),
    include_str!("scripts/lock.lua"),
    include_str!("scripts/unlock.lua"),
];

impl Scripts {
    pub fn new() -> Self {
        let [gcra, sliding_window, fixed_window, acquire_permit, release_permit, claim, lock, unlock] =
            SOURCES.map(Script::new);
        Scripts {
            gcra,
            sliding_window,
            fixed_window,
            acquire_permit,
            release_permit,
            claim,
            lock,
            unlock,
        }
    }

    /// One pipeline that loads every script (sent on connect and after NOSCRIPT).
    pub fn load_pipeline(&self) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for code in SOURCES {
            pipe.cmd("SCRIPT").arg("LOAD").arg(code).ignore();
        }
        pipe
    }
}
