// hapi-pulse, registered exactly like @hapi/nes, default options.

import Path from 'node:path';

import { createHapiTarget } from './hapi-common';
import type { ServerFactory } from './types';

// dist/bench/servers/pulse.js -> dist/lib/index.js
export const pulsePath = Path.join(__dirname, '..', '..', 'lib', 'index.js');

export const create: ServerFactory = async () => {

    return createHapiTarget(require(pulsePath));
};
