// @hapi/nes 14, default options (heartbeat 15 s / 5 s).

import { createHapiTarget } from './hapi-common';
import type { ServerFactory } from './types';

export const create: ServerFactory = async () => {

    return createHapiTarget(require('@hapi/nes'));
};
