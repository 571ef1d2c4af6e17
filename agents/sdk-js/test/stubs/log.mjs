import { host } from './host.mjs';
export const log = (...a) => host.call('log', 'log', a);
