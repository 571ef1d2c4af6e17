import { host } from './host.mjs';
export const complete = (...a) => host.call('model', 'complete', a);
export const granted = (...a) => host.call('model', 'granted', a);
