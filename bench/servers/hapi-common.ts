// Shared by the nes and hapi-pulse targets: the same hapi server, routes and subscriptions, only the plugin differs.

import type { Server } from '@hapi/hapi';

import { ECHO_PAYLOAD, type BenchServer } from './types';

// Minimal view of what nes (and hapi-pulse, as a drop-in) decorate the server with.
interface NesDecorated {
    subscription(path: string, options?: object): void;
    publish(path: string, message: unknown, options?: object): void;
}

// `pluginModule` is what require() returned, registered the way an application registers @hapi/nes:
// `await server.register({ plugin: require('@hapi/nes'), options })`.

// `extra` adds subscriptions (e.g. '/rec/{id}' with history) and, with `catchPublish`, counts rejected publishes
// instead of leaving them unhandled (a Redis broker rejects when Redis is unreachable); the default targets leave
// publish() exactly as an application would call it.

// `prepare` runs before the plugin is registered (e.g. an auth strategy) and `extend` adds methods that need the
// hapi server (the presence queries) to what the target returns.

export interface HapiExtras {
    subscriptions?: Array<[string, object]>;
    catchPublish?: boolean;
    prepare?(server: Server): void;
    extend?(server: Server): Partial<BenchServer>;
}

export async function createHapiTarget(pluginModule: unknown, options: object = {}, extra: HapiExtras = {}): Promise<BenchServer> {

    const Hapi = await import('@hapi/hapi');
    const server: Server = Hapi.server({ port: 0, host: '127.0.0.1', debug: false });
    extra.prepare?.(server);
    await server.register({ plugin: pluginModule as never, options });

    server.route({ method: 'GET', path: '/echo', handler: () => ECHO_PAYLOAD });

    const nes = server as unknown as NesDecorated;
    nes.subscription('/fan');
    nes.subscription('/item/{id}');
    nes.subscription('/multi/{id}');                    // the multi-path scenario (hapi-pulse only publishes to several)
    for (const [path, config] of extra.subscriptions ?? []) {
        nes.subscription(path, config);
    }

    let sockets = 0;
    let publishErrors = 0;
    server.listener.on('upgrade', (_req, socket) => {

        ++sockets;
        socket.once('close', () => --sockets);
    });

    return {
        listen: async () => {

            await server.start();
            return server.info.port as number;
        },
        publish: extra.catchPublish ?
            (path, message) => {

                const result = nes.publish(path, message) as unknown;
                if (result instanceof Promise) {
                    result.catch(() => ++publishErrors);
                }
            } :
            (path, message) => nes.publish(path, message),
        publishOnce: (paths, message) => nes.publish(paths as never, message, { once: true }),
        publishErrors: () => publishErrors,
        connections: () => sockets,
        stop: () => server.stop({ timeout: 500 }),
        ...extra.extend?.(server)
    };
}
