// hapi-pulse with `compression: true` (permessage-deflate, each publish compressed once for all its recipients).

import { createHapiTarget } from './hapi-common';
import { pulsePath } from './pulse';
import type { ServerFactory } from './types';

export const create: ServerFactory = async () => createHapiTarget(require(pulsePath), { compression: true });
