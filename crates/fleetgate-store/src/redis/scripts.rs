//! The Lua scripts, compiled in so a deployment cannot drift from the code; called by SHA
//! (EVALSHA), loaded on connect, and sent whole (EVAL) when a node answers NOSCRIPT.

use redis::Script;

pub(super) struct LuaScript {
    pub script: Script,
    pub source: &'static str,
}

impl LuaScript {
    fn new(source: &'static str) -> Self {
        LuaScript {
            script: Script::new(source),
            source,
        }
    }
    pub fn hash(&self) -> &str {
        self.script.get_hash()
    }
}

pub(super) struct Scripts {
    pub gcra: LuaScript,
    pub sliding_window: LuaScript,
    pub fixed_window: LuaScript,
    /// Several decisions on one key in one call (the hot-key batch, `rate_batch.rs`).
    pub gcra_batch: LuaScript,
    pub sliding_window_batch: LuaScript,
    pub fixed_window_batch: LuaScript,
    pub refund: LuaScript,
    pub reserve: LuaScript,
    pub give_back: LuaScript,
    pub acquire_permit: LuaScript,
    pub release_permit: LuaScript,
    pub claim: LuaScript,
    pub complete_claim: LuaScript,
    pub lock: LuaScript,
    pub unlock: LuaScript,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            gcra: LuaScript::new(concat!(
                include_str!("scripts/now.lua"),
                include_str!("scripts/gcra.lua")
            )),
            sliding_window: LuaScript::new(concat!(
                include_str!("scripts/now.lua"),
                include_str!("scripts/sliding_log.lua"),
                include_str!("scripts/sliding_window.lua")
            )),
            fixed_window: LuaScript::new(concat!(
                include_str!("scripts/now.lua"),
                include_str!("scripts/fixed_window.lua")
            )),
            gcra_batch: LuaScript::new(concat!(
                include_str!("scripts/now.lua"),
                include_str!("scripts/gcra_batch.lua")
            )),
            // The single decision's body as a function, called once per cost.
            sliding_window_batch: LuaScript::new(concat!(
                include_str!("scripts/now.lua"),
                include_str!("scripts/sliding_log.lua"),
                "local function decide_one(ARGV)\n",
                include_str!("scripts/sliding_window.lua"),
                "end\n",
                include_str!("scripts/sliding_window_batch.lua")
            )),
            fixed_window_batch: LuaScript::new(concat!(
                include_str!("scripts/now.lua"),
                include_str!("scripts/fixed_window_batch.lua")
            )),
            refund: LuaScript::new(concat!(
                include_str!("scripts/now.lua"),
                include_str!("scripts/sliding_log.lua"),
                include_str!("scripts/refund.lua")
            )),
            reserve: LuaScript::new(concat!(
                include_str!("scripts/now.lua"),
                include_str!("scripts/sliding_log.lua"),
                include_str!("scripts/reserve.lua")
            )),
            give_back: LuaScript::new(concat!(
                include_str!("scripts/now.lua"),
                include_str!("scripts/sliding_log.lua"),
                include_str!("scripts/give_back.lua")
            )),
            acquire_permit: LuaScript::new(include_str!("scripts/acquire_permit.lua")),
            release_permit: LuaScript::new(include_str!("scripts/release_permit.lua")),
            claim: LuaScript::new(include_str!("scripts/claim.lua")),
            complete_claim: LuaScript::new(include_str!("scripts/complete_claim.lua")),
            lock: LuaScript::new(include_str!("scripts/lock.lua")),
            unlock: LuaScript::new(include_str!("scripts/unlock.lua")),
        }
    }

    /// One pipeline that loads every script (sent on a fresh connection to one server).
    pub fn load_pipeline(&self) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for s in [
            &self.gcra,
            &self.sliding_window,
            &self.fixed_window,
            &self.gcra_batch,
            &self.sliding_window_batch,
            &self.fixed_window_batch,
            &self.refund,
            &self.reserve,
            &self.give_back,
            &self.acquire_permit,
            &self.release_permit,
            &self.claim,
            &self.complete_claim,
            &self.lock,
            &self.unlock,
        ] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(s.source).ignore();
        }
        pipe
    }
}
