// Raw `ws` baselines. They speak the subset of the nes v2 protocol that the benchmark uses (hello with subs, sub,
// unsub, request for GET /echo, ping), with no validation, routing or auth: the least work a server on this stack
// can do, so it serves as "the practical limit". Only the publish path differs between the two variants
// (ws-string.ts, ws-preframed.ts). No heartbeat unless the session asks for one (the many-sockets scenario); then
// it is the sweep the ws README suggests: every interval, terminate the sockets that did not answer the previous
// protocol ping, and ping all the others.

import Http from 'node:http';
import type { Socket } from 'node:net';

import { WebSocketServer, type WebSocket } from 'ws';

import { ECHO_PAYLOAD, type BenchServer, type ServerOptions } from './types';

export interface Conn {
    readonly ws: WebSocket;
    readonly raw: Socket;                       // The TCP socket under ws (the upgrade request's socket)
    readonly subs: string[];
    pending: Buffer[] | null;                   // Used by the pre-framed variant to batch writes within a tick
    alive: boolean;                             // Answered the last heartbeat ping
}

export type Publisher = (subscribers: ReadonlySet<Conn>, path: string, message: object) => void;

const markAlive = function (this: WebSocket & { conn: Conn }): void {

    this.conn.alive = true;
};

export async function createWsTarget(publisher: Publisher, options: ServerOptions = {}): Promise<BenchServer> {

    const http = Http.createServer((_req, res) => {

        res.statusCode = 404;
        res.end();
    });

    const wss = new WebSocketServer({ server: http, perMessageDeflate: false });
    const paths = new Map<string, Set<Conn>>();
    let nextSocketId = 1;

    const subscribe = (conn: Conn, path: string) => {

        let set = paths.get(path);
        if (!set) {
            set = new Set();
            paths.set(path, set);
        }

        set.add(conn);
        conn.subs.push(path);
    };

    const unsubscribe = (conn: Conn, path: string) => {

        const set = paths.get(path);
        if (set) {
            set.delete(conn);
            if (!set.size) {
                paths.delete(path);
            }
        }
    };

    wss.on('connection', (ws, req) => {

        const conn: Conn = { ws, raw: req.socket, subs: [], pending: null, alive: true };
        const socketId = String(nextSocketId++);
        if (options.heartbeat) {
            (ws as WebSocket & { conn: Conn }).conn = conn;
            ws.on('pong', markAlive as (this: WebSocket) => void);
        }

        ws.on('message', (data) => {

            let msg: { type?: string; id?: number; path?: string; subs?: string[] };
            try {
                msg = JSON.parse(data.toString());
            }
            catch {
                return ws.close(1003);
            }

            switch (msg.type) {
                case 'hello':
                    for (const path of msg.subs ?? []) {
                        subscribe(conn, path);
                    }

                    return ws.send(JSON.stringify({ type: 'hello', id: msg.id, socket: socketId }));
                case 'sub':
                    subscribe(conn, msg.path!);
                    return ws.send(JSON.stringify({ type: 'sub', id: msg.id, path: msg.path }));
                case 'unsub':
                    unsubscribe(conn, msg.path!);
                    return ws.send(JSON.stringify({ type: 'unsub', id: msg.id }));
                case 'request':
                    return ws.send(JSON.stringify({ type: 'request', id: msg.id, statusCode: 200, payload: ECHO_PAYLOAD }));
                case 'ping':
                    return;
                default:
                    return ws.send(JSON.stringify({ type: msg.type, id: msg.id, statusCode: 400, payload: { error: 'Bad Request' } }));
            }
        });

        ws.on('close', () => {

            for (const path of conn.subs) {
                unsubscribe(conn, path);
            }
        });

        ws.on('error', () => { });
    });

    const beat = options.heartbeat && setInterval(() => {

        for (const ws of wss.clients) {
            const conn = (ws as WebSocket & { conn: Conn }).conn;
            if (!conn.alive) {
                ws.terminate();
                continue;
            }

            conn.alive = false;
            ws.ping();
        }
    }, options.heartbeat.interval);

    return {
        listen: () => new Promise((resolve) => http.listen(0, '127.0.0.1', () => resolve((http.address() as { port: number }).port))),
        publish: (path, message) => {

            const set = paths.get(path);
            if (set) {
                publisher(set, path, message);
            }
        },
        connections: () => wss.clients.size,
        stop: async () => {

            clearInterval(beat || undefined);
            for (const ws of wss.clients) {
                ws.terminate();
            }

            await new Promise<void>((resolve) => wss.close(() => resolve()));
            await new Promise<void>((resolve) => http.close(() => resolve()));
        }
    };
}
