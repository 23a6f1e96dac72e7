// socket.io 4 (websocket transport only, no polling, default options). A client passes its subscriptions in the
// connect packet's auth payload ({ subs: [...] }) and is joined to one room per path; publish is a room broadcast,
// which socket.io encodes once per publish. Requests are an emit with an acknowledgement.

import Http from 'node:http';

import { Server } from 'socket.io';

import { ECHO_PAYLOAD, type BenchServer, type ServerFactory, type ServerOptions } from './types';

export const create: ServerFactory = async (options = {}) => createSocketIo(options, false);

export const createSocketIo = async (options: ServerOptions, perMessageDeflate: boolean): Promise<BenchServer> => {

    const http = Http.createServer();
    const heartbeat = options.heartbeat ? { pingInterval: options.heartbeat.interval, pingTimeout: options.heartbeat.timeout } : {};
    const io = new Server(http, { transports: ['websocket'], serveClient: false, perMessageDeflate, ...heartbeat });

    io.on('connection', (socket) => {

        const subs = (socket.handshake.auth as { subs?: unknown }).subs;
        if (Array.isArray(subs)) {
            socket.join(subs as string[]);
        }

        socket.on('sub', (path: string, ack?: (r: unknown) => void) => {

            socket.join(path);
            ack?.({ path });
        });

        socket.on('req', (_req: unknown, ack?: (r: unknown) => void) => ack?.({ statusCode: 200, payload: ECHO_PAYLOAD }));
    });

    return {
        listen: () => new Promise((resolve) => http.listen(0, '127.0.0.1', () => resolve((http.address() as { port: number }).port))),
        publish: (path, message) => {

            io.to(path).emit('pub', message);
        },
        connections: () => io.engine.clientsCount,
        stop: async () => {

            io.disconnectSockets(true);
            await new Promise<void>((resolve) => io.close(() => resolve()));
        }
    };
};
