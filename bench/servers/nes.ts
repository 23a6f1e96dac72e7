// @hapi/nes 14, default options (heartbeat 15 s / 5 s, or the session's heartbeat).

import { createHapiTarget } from './hapi-common';
import type { ServerFactory } from './types';

export const create: ServerFactory = async (options = {}) => {

    return createHapiTarget(require('@hapi/nes'), options.heartbeat ? { heartbeat: options.heartbeat } : {});
};
