// hapi-pulse, registered exactly like @hapi/nes, default options. The two-node and recovery scenarios pass
// ServerOptions: a RedisBroker shared by several server processes, and/or a '/rec/{id}' subscription with history.

import Path from 'node:path';

import { createHapiTarget } from './hapi-common';
import type { ServerFactory } from './types';

// dist/bench/servers/pulse.js -> dist/lib/index.js and the dist/lib/redis.js entry
export const pulsePath = Path.join(__dirname, '..', '..', 'lib', 'index.js');
const redisPath = Path.join(__dirname, '..', '..', 'lib', 'redis.js');

export const create: ServerFactory = async (options = {}) => {

    const Pulse = require(pulsePath);
    if (!options.broker && !options.history) {
        return createHapiTarget(Pulse);
    }

    const { RedisBroker } = require(redisPath) as { RedisBroker: new (options: object) => unknown };
    const pluginOptions = options.broker === 'redis' ? { broker: new RedisBroker({ url: options.url, prefix: options.prefix }) } : {};
    const subscriptions: Array<[string, object]> = options.history ? [['/rec/{id}', { history: options.history }]] : [];
    return createHapiTarget(Pulse, pluginOptions, { subscriptions, catchPublish: true });
};
