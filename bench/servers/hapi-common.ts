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

export async function createHapiTarget(pluginModule: unknown, options: object = {}): Promise<BenchServer> {

    const Hapi = await import('@hapi/hapi');
    const server: Server = Hapi.server({ port: 0, host: '127.0.0.1', debug: false });
    await server.register({ plugin: pluginModule as never, options });

    server.route({ method: 'GET', path: '/echo', handler: () => ECHO_PAYLOAD });

    const nes = server as unknown as NesDecorated;
    nes.subscription('/fan');
    nes.subscription('/item/{id}');

    let sockets = 0;
    server.listener.on('upgrade', (_req, socket) => {

        ++sockets;
        socket.once('close', () => --sockets);
    });

    return {
        listen: async () => {

            await server.start();
            return server.info.port as number;
        },
        publish: (path, message) => nes.publish(path, message),
        connections: () => sockets,
        stop: () => server.stop({ timeout: 500 })
    };
}
