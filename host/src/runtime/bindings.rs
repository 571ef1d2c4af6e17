//! Host bindings generated from `wit/` (the single source of truth).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "agent",
    // Every import is async (the store runs off the async threads) and
    // trappable (a host fault, such as a failed audit write, traps the
    // invocation instead of being shown to the agent as its own error).
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::concord::agent::types;
