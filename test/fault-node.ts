// One node of the fault run (test/fault-engine.ts), in its own process: a hapi server with hapi-pulse over the
// Redis broker, driven by the engine through IPC (publish, broadcast, stop). Run only as a child process.

import * as Boom from '@hapi/boom';
import * as Hapi from '@hapi/hapi';

import * as Pulse from '../lib/index';
import { RedisBroker } from '../lib/redis';

export interface NodeConfig {
    port: number;
    redis: string;                       // the node's own link to Redis (a proxy the engine can cut)
    prefix: string;
    timeout: number;                     // the broker's timeout
    history: { size: number; ttl: number };
    small: { size: number; ttl: number };
    maxBufferedBytes: number;
}

export type Request =
    | { op: 'publish'; path: string; message: unknown; user?: string }
    | { op: 'broadcast'; message: unknown }
    | { op: 'stop' };

export type Command = Request & { id: number };

export type Report =
    | { type: 'ready'; port: number }
    | { type: 'done'; id: number; error?: string }
    | { type: 'log'; tags: string[]; path?: string };

// What every node's filter does, shared with the engine's expectations: `hide` drops the message for that
// user, `over` replaces it for that user.
export interface FaultMessage {
    seq: number;
    hide?: string;
    over?: string;
    overridden?: boolean;
    pad?: string;
}

const main = async (): Promise<void> => {

    const config: NodeConfig = JSON.parse(process.argv[2]!);
    const send = (report: Report) => process.send!(report);

    const srv = Hapi.server({ host: '127.0.0.1', port: config.port });
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
    srv.auth.default('user');

    const broker = new RedisBroker({ url: config.redis, prefix: config.prefix, timeout: config.timeout, client: { socket: { reconnectStrategy: () => 100 } } });
    await srv.register({ plugin: Pulse.plugin, options: { broker, auth: { type: 'direct', index: true }, heartbeat: { interval: 2000, timeout: 1000 }, limits: { maxBufferedBytes: config.maxBufferedBytes } } });

    const filter = (_path: string, message: FaultMessage, options: { credentials: Record<string, any> | null }) => {

        const user = options.credentials?.user;
        if (message.hide === user) {
            return false;
        }

        return message.over === user ? { override: { ...message, overridden: true } } : true;
    };

    const auth = { mode: 'required' as const, index: true };
    srv.subscription('/h/{id}', { history: config.history, filter, auth });
    srv.subscription('/small/{id}', { history: config.small, filter, auth });
    srv.subscription('/p/{id}', { filter, auth });

    srv.events.on('log', (event) => {

        if (event.tags.includes('gap') || event.tags.includes('slow-consumer')) {
            const data = event.data as { path?: string } | undefined;
            send({ type: 'log', tags: event.tags, path: data?.path });
        }
    });

    process.on('message', async (command: Command) => {

        try {
            if (command.op === 'publish') {
                await srv.publish(command.path, command.message, command.user === undefined ? {} : { user: command.user });
            }
            else if (command.op === 'broadcast') {
                await srv.broadcast(command.message);
            }
            else {
                await srv.stop({ timeout: 2000 });
                send({ type: 'done', id: command.id });
                process.exit(0);
            }

            send({ type: 'done', id: command.id });
        }
        catch (err) {
            send({ type: 'done', id: command.id, error: (err as Error).message });
        }
    });

    await srv.start();
    send({ type: 'ready', port: Number(srv.info.port) });
};

if (require.main === module) {
    main().catch((err) => {

        console.error(err);
        process.exit(1);
    });
}
