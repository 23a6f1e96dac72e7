// A presence node in its own process (test/presence.ts kills it with SIGKILL): a hapi server with hapi-pulse over
// the Redis broker and one subscription with presence. Run only as a child process.

import * as Boom from '@hapi/boom';
import * as Hapi from '@hapi/hapi';

import * as Pulse from '../lib/index';
import { RedisBroker } from '../lib/redis';

export interface PresenceNodeConfig {
    redis: string;
    prefix: string;
    lease: number;
}

const main = async (): Promise<void> => {

    const config: PresenceNodeConfig = JSON.parse(process.argv[2]!);
    const srv = Hapi.server({ host: '127.0.0.1', port: 0 });
    srv.auth.scheme('user', () => ({
        authenticate: (request: Hapi.Request, h: Hapi.ResponseToolkit) => {

            const user = request.headers['x-user'];
            if (typeof user !== 'string') {
                throw Boom.unauthorized(null, 'User');
            }

            return h.authenticated({ credentials: { user } });
        }
    }));
    srv.auth.strategy('user', 'user');

    const broker = new RedisBroker({ url: config.redis, prefix: config.prefix, presence: { lease: config.lease } });
    await srv.register({ plugin: Pulse.plugin, options: { broker, auth: { type: 'direct', route: { strategy: 'user', mode: 'optional' } } } });
    srv.subscription('/room/{id}', { presence: { info: (credentials) => ({ alias: credentials.user }), interval: 20 } });
    await srv.start();
    process.send!({ type: 'ready', port: srv.info.port });
};

if (require.main === module) {
    main().catch((err) => {

        console.error(err);
        process.exit(1);
    });
}
