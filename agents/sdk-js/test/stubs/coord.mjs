import { host } from './host.mjs';
export const act = (...a) => host.call('coord', 'act', a);
export const requestChange = (...a) => host.call('coord', 'requestChange', a);
export const resolveChange = (...a) => host.call('coord', 'resolveChange', a);
export const lease = (...a) => host.call('coord', 'lease', a);
export const renew = (...a) => host.call('coord', 'renew', a);
export const release = (...a) => host.call('coord', 'release', a);
export const changesSinceRead = (...a) => host.call('coord', 'changesSinceRead', a);
