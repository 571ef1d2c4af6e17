import { host } from './host.mjs';
export const get = (...a) => host.call('kb', 'get', a);
export const commit = (...a) => host.call('kb', 'commit', a);
export const history = (...a) => host.call('kb', 'history', a);
export const recent = (...a) => host.call('kb', 'recent', a);
