// Load-child commands of the presence scenarios (spread into load.ts's command table): authenticated sockets on one
// path, socket i sending `auth.headers['x-user'] = u<i>` in its hello (one user per socket); dropping them all and
// opening them again (the same users); and one anonymous follower of the path's presence (`/$presence<path>`) that
// parses every message it gets, keeps the member list (protocol.md §9) and counts messages and the changes they carry.

import { WebSocket } from 'ws';

import { nowMs } from './ipc';

interface Follower {
    ws: WebSocket;
    members: Set<string>;
    anonymous: number;
    messages: number;                                          // presence messages since presArm
    lists: number;                                              // of which whole lists
    joins: number;
    leaves: number;
    updates: number;
    lastAt: number;                                             // nowMs() of the last presence message (any time)
    armedAt: number;
}

interface PresenceMessage {
    presence: 'list' | 'diff';
    members?: Array<{ id: string }>;
    joins?: Array<{ id: string }>;
    leaves?: string[];
    updates?: unknown[];
    anonymous: number;
}

const sockets = new Map<number, WebSocket[]>();              // by group (the node they are on)
let follower: Follower | null = null;
let nextId = 1;

// Opens one socket, sends its hello and resolves on a hello reply without error.
function open(port: number, hello: object, timeoutMs: number, onPub?: (message: PresenceMessage) => void): Promise<WebSocket> {

    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false, handshakeTimeout: timeoutMs });
    return new Promise<WebSocket>((resolve, reject) => {

        let settled = false;
        const done = (err?: Error) => {

            if (!settled) {
                settled = true;
                clearTimeout(timer);
                if (err) {
                    ws.terminate();
                    return reject(err);
                }

                resolve(ws);
            }
        };

        const timer = setTimeout(() => done(new Error('presence socket setup timed out')), timeoutMs);
        ws.on('open', () => ws.send(JSON.stringify({ type: 'hello', id: nextId++, version: '2', ...hello })));
        ws.on('message', (data: Buffer) => {

            const msg = JSON.parse(data.toString()) as { type: string; statusCode?: number; message?: PresenceMessage };
            if (msg.type === 'ping') {
                return ws.send(`{"type":"ping","id":${nextId++}}`);
            }

            if (msg.type === 'hello') {
                return done(msg.statusCode !== undefined && msg.statusCode >= 400 ? new Error(`hello failed: ${data.toString()}`) : undefined);
            }

            if (msg.type === 'pub' && msg.message && onPub) {
                onPub(msg.message);
            }
        });

        ws.on('error', (err) => done(err));
        ws.on('close', () => done(new Error('closed during setup')));
    });
}

function onPresence(f: Follower, message: PresenceMessage): void {

    f.lastAt = nowMs();
    ++f.messages;
    f.anonymous = message.anonymous;
    if (message.presence === 'list') {
        ++f.lists;
        f.members = new Set((message.members ?? []).map((m) => m.id));
        return;
    }

    for (const join of message.joins ?? []) {
        f.members.add(join.id);
    }

    for (const id of message.leaves ?? []) {
        f.members.delete(id);
    }

    f.joins += message.joins?.length ?? 0;
    f.leaves += message.leaves?.length ?? 0;
    f.updates += message.updates?.length ?? 0;
}

function followerState(f: Follower) {

    return { messages: f.messages, lists: f.lists, joins: f.joins, leaves: f.leaves, updates: f.updates, members: f.members.size, anonymous: f.anonymous, lastAt: f.lastAt, armedAt: f.armedAt };
}

function closeAll(list: WebSocket[]): Promise<void> {

    const closing = list.map((ws) => new Promise<void>((resolve) => {

        if (ws.readyState === WebSocket.CLOSED) {
            return resolve();
        }

        ws.once('close', () => resolve());
        ws.terminate();
    }));

    return Promise.race([Promise.all(closing).then(() => undefined), new Promise<void>((resolve) => setTimeout(resolve, 3_000))]);
}

export const presenceCommands = {
    // Opens `count` sockets of users u0 … u<count - 1> on `path`, `inflight` setups at a time, as group `group`.
    presConnect: async (args: Record<string, unknown>) => {

        const group = Number(args.group ?? 0);
        const list = sockets.get(group) ?? [];
        sockets.set(group, list);
        const port = Number(args.port);
        const path = String(args.path);
        const count = Number(args.count);
        const timeoutMs = Number(args.timeoutMs ?? 10_000);
        const deadline = nowMs() + Number(args.totalTimeoutMs ?? 60_000);
        let next = 0;
        let failed = 0;
        let firstError = '';
        const t0 = nowMs();
        const worker = async () => {

            while (next < count && nowMs() < deadline) {
                const user = `u${next++}`;
                try {
                    list.push(await open(port, { subs: [path], auth: { headers: { 'x-user': user } } }, timeoutMs));
                }
                catch (err) {
                    ++failed;
                    firstError = firstError || (err as Error).message;
                }
            }
        };

        await Promise.all(Array.from({ length: Math.min(Number(args.inflight ?? 100), count) }, worker));
        failed += count - next;
        return { connected: count - failed, failed, firstError: firstError || (next < count ? 'setup deadline reached' : ''), ms: nowMs() - t0 };
    },

    // Closes every user socket of `group` from the client side (no close frame, as a dropped network would).
    presDrop: async (args: Record<string, unknown>) => {

        const t0 = nowMs();
        await closeAll(sockets.get(Number(args.group ?? 0))?.splice(0) ?? []);
        return { ms: nowMs() - t0 };
    },

    // Opens the follower of `/$presence<path>` (anonymous); resolves after the hello reply.
    presFollow: async (args: Record<string, unknown>) => {

        const f: Follower = { ws: null as unknown as WebSocket, members: new Set(), anonymous: 0, messages: 0, lists: 0, joins: 0, leaves: 0, updates: 0, lastAt: 0, armedAt: nowMs() };
        f.ws = await open(Number(args.port), { subs: [`/$presence${String(args.path)}`] }, Number(args.timeoutMs ?? 10_000), (message) => onPresence(f, message));
        follower = f;
        return {};
    },

    // Restarts the follower's counters (its member list stays).
    presArm: () => {

        const f = follower!;
        Object.assign(f, { messages: 0, lists: 0, joins: 0, leaves: 0, updates: 0, armedAt: nowMs() });
        return {};
    },

    // Resolves once the follower lists `members` members and has had no message for `quietMs`, or after `timeoutMs`.
    presSettle: async (args: Record<string, unknown>) => {

        const f = follower!;
        const members = Number(args.members);
        const quietMs = Number(args.quietMs);
        const end = nowMs() + Number(args.timeoutMs);
        while (nowMs() < end && (f.members.size !== members || nowMs() - Math.max(f.lastAt, f.armedAt) < quietMs)) {
            await new Promise((resolve) => setTimeout(resolve, 20));
        }

        return { ...followerState(f), settled: f.members.size === members };
    },

    presRead: () => followerState(follower!),

    presClose: async () => {

        const all = [...sockets.values()].flatMap((list) => list.splice(0));
        if (follower) {
            all.push(follower.ws);
            follower = null;
        }

        await closeAll(all);
        return {};
    }
};
