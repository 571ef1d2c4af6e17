// A stand-in for the host, for the SDK's tests: the `concord:agent/*`
// imports resolve to the modules of this folder, which record each call and
// answer with what a test set in `host.answers`. An `err` is thrown as
// componentize-js throws it: an Error whose `payload` is the error value.
export class ComponentError extends Error {
  constructor(value) {
    const enumerable = typeof value !== 'string';
    super(enumerable ? `${String(value)} (see error.payload)` : value);
    Object.defineProperty(this, 'payload', { value, enumerable });
  }
}

export const host = {
  /** Every call, as `[interface, function, args]`. */
  calls: [],
  /** `answers["kb.get"] = (...args) => value`; throw `err(value)` for an `err`. */
  answers: {},
  reset() {
    this.calls = [];
    this.answers = {};
  },
  call(iface, fn, args) {
    this.calls.push([iface, fn, args]);
    const answer = this.answers[`${iface}.${fn}`];
    if (answer === undefined) throw new Error(`test stub: no answer for ${iface}.${fn}`);
    return answer(...args);
  },
};

/** What a host call that answers `err(value)` does in a component. */
export function err(value) {
  return new ComponentError(value);
}
