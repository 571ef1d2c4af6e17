// Globals the component's engine (StarlingMonkey) provides that agents may
// use; `lib: es2022` has none of the web's. stdout and stderr go to the host
// log (bounded by `[limits] output_bytes`); prefer `info`/`warn` (audited).
declare var console: {
  log(...data: unknown[]): void;
  info(...data: unknown[]): void;
  warn(...data: unknown[]): void;
  error(...data: unknown[]): void;
  debug(...data: unknown[]): void;
};
