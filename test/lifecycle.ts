// Churn and stop: thousands of connect / subscribe / disconnect cycles leave nothing behind, and
// server.stop() finishes in-flight requests, sends everyone away with 1001 and leaves no open handle.

import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';

import { Nes, Peer, server, url, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

// Handles the process holds, by kind (timers, TCP sockets, servers).
const resources = (): Record<string, number> => {

    const counts: Record<string, number> = {};
    for (const kind of process.getActiveResourcesInfo()) {
        counts[kind] = (counts[kind] ?? 0) + 1;
    }

    return counts;
};

const settled = (baseline: Record<string, number>): boolean => {

    const now = resources();
    return ['Timeout', 'TCPSocketWrap', 'TCPServerWrap'].every((kind) => (now[kind] ?? 0) <= (baseline[kind] ?? 0));
};

const auth = (srv: Hapi.Server): void => {

    srv.auth.scheme('test', () => ({
        authenticate: async (request: Hapi.Request, h: Hapi.ResponseToolkit) => {

            await wait(Number(request.headers['x-delay'] ?? 0));
            const user = request.headers.authorization as string | undefined;
            if (!user) {
                throw Boom.unauthorized(null, 'User');
            }

            return h.authenticated({ credentials: { user, scope: ['user-' + user] } });
        }
    }) as any);
    srv.auth.strategy('default', 'test');
    srv.auth.default('default');
};

describe('lifecycle', () => {

    it('leaves no socket, subscription, user entry or timer behind after thousands of cycles', { timeout: 60000 }, async () => {

        const baseline = resources();
        const events = { connected: 0, disconnected: 0, subscribed: 0, unsubscribed: 0 };
        const srv = await server({
            auth: { type: 'direct', index: true, maxConnectionsPerUser: 1000, timeout: 1000, route: { mode: 'optional' } },
            heartbeat: { interval: 1000, timeout: 500 },
            onConnection: () => {

                ++events.connected;
            },
            onDisconnection: () => {

                ++events.disconnected;
            }
        }, 'pulse', auth);

        const track = {
            onSubscribe: async () => {

                ++events.subscribed;
                await wait(1);
            },
            onUnsubscribe: () => {

                ++events.unsubscribed;
            }
        };

        srv.subscription('/item/{id}', track);
        srv.subscription('/user/{id}', { ...track, auth: { scope: ['user-{params.id}'], index: true } });
        srv.route({ method: 'GET', path: '/', options: { auth: false, handler: () => 'ok' } });
        await srv.start();

        const cycle = async (n: number): Promise<void> => {

            const user = `u${n % 7}`;
            const hello = { type: 'hello', id: 1, version: '2', auth: { headers: { authorization: user, 'x-delay': String(n % 3) } }, subs: [`/item/${n % 11}`, `/user/${user}`] };
            switch (n % 6) {
                case 0: {                                                           // the full conversation, closed politely
                    const peer = await Peer.open(url(srv));
                    await peer.request(hello);
                    await peer.request({ type: 'sub', id: 2, path: `/item/${n % 13}` });
                    await peer.request({ type: 'request', id: 3, method: 'GET', path: '/' });
                    peer.close();
                    await peer.closedWith();
                    return;
                }

                case 1: {                                                           // dropped right after hello
                    const peer = await Peer.open(url(srv));
                    await peer.request(hello);
                    peer.ws.terminate();
                    return;
                }

                case 2: {                                                           // dropped while hello authenticates
                    const peer = await Peer.open(url(srv));
                    peer.send({ ...hello, auth: { headers: { authorization: user, 'x-delay': '5' } } });
                    await wait(n % 4);
                    peer.ws.terminate();
                    return;
                }

                case 3: {                                                           // dropped while subscribing
                    const peer = await Peer.open(url(srv));
                    await peer.request(hello);
                    peer.send({ type: 'sub', id: 2, path: `/item/${100 + (n % 5)}` });
                    peer.ws.terminate();
                    return;
                }

                case 4: {                                                           // never says hello
                    const peer = await Peer.open(url(srv));
                    peer.send({ type: 'ping', id: 1 });
                    peer.close();
                    return;
                }

                default: {                                                          // the stock client
                    const client = new Nes.Client(url(srv));
                    client.onError = () => { };
                    await client.connect({ auth: { headers: { authorization: user } }, reconnect: false });
                    await client.subscribe(`/user/${user}`, () => { });
                    await client.unsubscribe(`/user/${user}`);
                    await client.subscribe(`/item/${n % 3}`, () => { });
                    await client.disconnect();
                }
            }
        };

        const cycles = 3000;
        const parallel = 60;
        for (let start = 0; start < cycles; start += parallel) {
            await Promise.all(Array.from({ length: parallel }, (_, i) => cycle(start + i)));
        }

        await until(() => srv.pulseStats().sockets === 0, 10000, 'sockets to close');
        await wait(50);                                                             // hellos that were still authenticating
        expect(srv.pulseStats()).to.equal({ sockets: 0, users: 0, topics: 0, subscriptions: 0, pendingUpgrades: 0 });
        expect(events.disconnected).to.equal(cycles);
        expect(events.unsubscribed).to.be.at.most(events.subscribed);

        await srv.stop();
        await until(() => settled(baseline), 5000, 'handles to close');
    });

    describe('server.stop()', () => {

        it('lets in-flight requests finish, then closes every socket with 1001', async () => {

            const baseline = resources();
            const srv = await server({ closeTimeout: 2000 });
            let started = 0;
            srv.route({ method: 'GET', path: '/slow', handler: async () => {

                ++started;
                await wait(200);
                return 'finished';
            } });
            srv.subscription('/feed');
            await srv.start();

            const client = new Nes.Client(url(srv));
            await client.connect();
            await client.subscribe('/feed', () => { });
            const disconnected = new Promise<{ willReconnect: boolean; code: number }>((resolve) => {

                client.onDisconnect = (willReconnect: boolean, log: { code: number }) => resolve({ willReconnect, code: log.code });
            });

            const peer = await Peer.open(url(srv));
            await peer.hello();

            const reply = client.request('/slow');
            peer.send({ type: 'request', id: 2, method: 'GET', path: '/slow' });
            await until(() => started === 2);

            const stopping = srv.stop();
            expect((await reply).payload).to.equal('finished');
            expect((await peer.next()).payload).to.equal('finished');
            expect(await disconnected).to.equal({ willReconnect: true, code: 1001 });
            expect(await peer.closedWith()).to.equal({ code: 1001, reason: 'Server stopping' });
            await stopping;

            await client.disconnect();                                               // stop the stock client reconnecting
            await expect(Peer.open(url(srv))).to.reject();
            expect(srv.pulseStats().sockets).to.equal(0);
            await until(() => settled(baseline), 5000, 'handles to close');
        });

        it('is bounded: requests that never finish and clients that never read do not hold it', async () => {

            const baseline = resources();
            const srv = await server({ closeTimeout: 100 });
            srv.route({ method: 'GET', path: '/forever', handler: () => new Promise(() => { }) });
            await srv.start();

            const busy = await Peer.open(url(srv));
            await busy.hello();
            busy.send({ type: 'request', id: 2, method: 'GET', path: '/forever' });

            const deaf = await Peer.open(url(srv));
            await deaf.hello();
            (deaf.ws as any)._socket.pause();                                        // never answers the close frame

            await wait(20);
            await srv.stop({ timeout: 500 });
            expect(srv.pulseStats().sockets).to.equal(0);
            expect((await busy.closedWith()).code).to.equal(1001);
            (deaf.ws as any)._socket.resume();
            await until(() => deaf.closed !== null);
            await until(() => settled(baseline), 5000, 'handles to close');
        });

        it('refuses upgrades after stop and can start again', async () => {

            const srv = await server();
            await srv.start();
            const port = srv.info.port;
            await srv.stop();

            const restarted = await server();
            await restarted.start();
            const peer = await Peer.open(url(restarted));
            expect((await peer.hello()).type).to.equal('hello');
            peer.close();
            await restarted.stop();
            expect(port).to.be.a.number();
        });
    });
});
