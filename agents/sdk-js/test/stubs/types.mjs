// `concord:agent/types` has no functions; the SDK imports only its types.
export {};
