#![no_std]
// This file exists to enable the library target (the agent's build-dependency on this crate).
