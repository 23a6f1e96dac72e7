// Per-socket limits: what a client hits, what it sees, and that everyone else keeps being served.

import * as Boom from '@hapi/boom';
import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import { MemoryBroker } from '../lib';

import { Nes, Peer, server, url, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const MiB = 1024 * 1024;

const gate = (): { promise: Promise<void>; open: () => void } => {

    let open!: () => void;
    const promise = new Promise<void>((resolve) => {

        open = resolve;
    });

    return { promise, open };
};

describe('limits', () => {

    describe('maxPayload', () => {

        it('defaults to 1 MiB and closes with 1009 above it', async () => {

            const srv = await server({ onMessage: (_socket: unknown, message: string) => message.length });
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello();
            const under = JSON.stringify({ type: 'message', id: 2, message: '' });
            const fill = 'x'.repeat(MiB - under.length);
            expect(await peer.request({ type: 'message', id: 2, message: fill })).to.equal({ type: 'message', id: 2, message: fill.length });

            peer.send({ type: 'message', id: 3, message: fill + 'x' });
            expect((await peer.closedWith()).code).to.equal(1009);

            const other = await Peer.open(url(srv));
            expect((await other.hello()).type).to.equal('hello');
            other.close();
            await srv.stop();
        });

        it('is enforced by ws on the frame header, before the bytes are buffered', async () => {

            const srv = await server({ limits: { maxPayload: 1024 } });
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello();

            // Announce a 100 MiB frame, send only its header: the server closes without waiting for the body.
            const header = Buffer.from([0x81, 0xff, 0, 0, 0, 0, 0x06, 0x40, 0, 0, 1, 2, 3, 4]);
            (peer.ws as any)._socket.write(header);
            expect((await peer.closedWith()).code).to.equal(1009);
            expect(srv.pulseStats().sockets).to.equal(0);
            await srv.stop();
        });

        it('closes with 1009 on a frame over a custom limit', async () => {

            const srv = await server({ limits: { maxPayload: 1024 } });
            await srv.start();

            const peer = await Peer.open(url(srv));
            peer.send('x'.repeat(1025));
            expect((await peer.closedWith()).code).to.equal(1009);
            await srv.stop();
        });
    });

    describe('maxInFlight', () => {

        it('answers 429 beyond the limit and keeps the socket usable', async () => {

            const release = gate();
            const srv = await server({ limits: { maxInFlight: 2 } });
            srv.route({ method: 'GET', path: '/slow', handler: async () => {

                await release.promise;
                return 'done';
            } });
            srv.route({ method: 'GET', path: '/', handler: () => 'fast' });
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello();
            for (let id = 2; id <= 6; ++id) {
                peer.send({ type: 'request', id, method: 'GET', path: '/slow' });
            }

            peer.send({ type: 'ping', id: 7 });                                         // pings are not requests
            await peer.count(4);
            expect(peer.frames.slice(1).map((frame) => JSON.parse(frame))).to.equal([4, 5, 6].map((id) => ({
                statusCode: 429,
                payload: { error: 'Too Many Requests', message: 'Too many requests in flight' },
                type: 'request',
                id
            })));

            release.open();
            await peer.count(6);
            expect(peer.frames.slice(4).map((frame) => JSON.parse(frame).id)).to.equal([2, 3]);
            peer.read = 6;
            expect((await peer.request({ type: 'request', id: 8, method: 'GET', path: '/' })).payload).to.equal('fast');
            expect(peer.closed).to.be.null();
            peer.close();
            await srv.stop();
        });
    });

    describe('rate', () => {

        it('closes a socket that sends more messages than allowed per interval (4004)', async () => {

            const srv = await server({ limits: { rate: { messages: 5, interval: 60000 } } });
            await srv.start();

            const polite = await Peer.open(url(srv));
            await polite.hello();

            const peer = await Peer.open(url(srv));
            await peer.hello();
            for (let i = 0; i < 4; ++i) {
                peer.send({ type: 'ping', id: i + 2 });
            }

            await wait(20);
            expect(peer.closed).to.be.null();
            peer.send({ type: 'ping', id: 10 });
            expect(await peer.closedWith()).to.equal({ code: 4004, reason: 'Message rate limit exceeded' });

            expect((await polite.request({ type: 'sub', id: 2, path: '/none' })).statusCode).to.equal(404);
            polite.close();
            await srv.stop();
        });

        it('opens a new window after the interval', async () => {

            const srv = await server({ limits: { rate: { messages: 2, interval: 50 } } });
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello();
            for (let i = 0; i < 5; ++i) {
                await wait(60);                                             // since the server read the last pair
                const replies = peer.frames.length;
                peer.send({ type: 'sub', id: 2, path: '/none' });
                peer.send({ type: 'sub', id: 3, path: '/none' });
                await peer.count(replies + 2);
            }

            expect(peer.closed).to.be.null();
            peer.close();
            await srv.stop();
        });
    });

    describe('maxSubscriptions and maxPathLength', () => {

        it('refuses subscriptions beyond the limit with 429', async () => {

            const srv = await server({ limits: { maxSubscriptions: 2 } });
            srv.subscription('/item/{id}');
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello({ subs: ['/item/1'] });
            expect(await peer.request({ type: 'sub', id: 2, path: '/item/2' })).to.equal({ type: 'sub', id: 2, path: '/item/2' });
            expect(await peer.request({ type: 'sub', id: 3, path: '/item/2' })).to.equal({ type: 'sub', id: 3, path: '/item/2' });      // already held
            expect(await peer.request({ type: 'sub', id: 4, path: '/item/3' })).to.equal({ statusCode: 429, payload: { error: 'Too Many Requests', message: 'Too many subscriptions' }, type: 'sub', id: 4 });
            expect(await peer.request({ type: 'unsub', id: 5, path: '/item/1' })).to.equal({ type: 'unsub', id: 5 });
            expect(await peer.request({ type: 'sub', id: 6, path: '/item/3' })).to.equal({ type: 'sub', id: 6, path: '/item/3' });
            expect(srv.pulseStats()).to.include({ topics: 2, subscriptions: 2 });

            // A hello asking for more than the limit fails validation: error, then close.
            const greedy = await Peer.open(url(srv));
            const reply = await greedy.hello({ subs: ['/item/1', '/item/2', '/item/3'] });
            expect(reply).to.equal({ statusCode: 400, payload: { error: 'Bad Request', message: 'Message subs must be an array of at most 2 paths' }, type: 'hello', id: 1 });
            expect((await greedy.closedWith()).code).to.equal(1008);

            peer.close();
            await srv.stop();
        });

        it('refuses long paths with 400 and keeps the socket usable', async () => {

            const srv = await server({ limits: { maxPathLength: 16 } });
            srv.subscription('/item/{id}');
            srv.route({ method: 'GET', path: '/', handler: () => 'ok' });
            await srv.start();

            const peer = await Peer.open(url(srv));
            await peer.hello();
            expect(await peer.request({ type: 'sub', id: 2, path: '/item/' + 'x'.repeat(11) })).to.equal({ statusCode: 400, payload: { error: 'Bad Request', message: 'Message path is longer than 16 characters' }, type: 'sub', id: 2 });
            expect((await peer.request({ type: 'request', id: 3, method: 'GET', path: '/?' + 'x'.repeat(20) })).statusCode).to.equal(400);
            expect((await peer.request({ type: 'sub', id: 4, path: '/item/' + 'x'.repeat(10) })).type).to.equal('sub');
            expect((await peer.request({ type: 'request', id: 5, method: 'GET', path: '/' })).payload).to.equal('ok');
            peer.close();
            await srv.stop();
        });
    });

    describe('onUpgrade and hello timeout', () => {

        it('lets the application accept or refuse the upgrade before any protocol work', async () => {

            const seen: { address: string | undefined; header: unknown }[] = [];
            const srv = await server({
                onUpgrade: async (req: any) => {

                    seen.push({ address: req.socket.remoteAddress, header: req.headers['x-tenant'] });
                    await wait(1);
                    switch (req.headers['x-tenant']) {
                        case 'good': return true;
                        case 'busy': throw Boom.tooManyRequests();
                        case 'broken': throw new Error('boom');
                        default: return false;
                    }
                }
            });
            await srv.start();

            const good = await Peer.open(url(srv), { headers: { 'x-tenant': 'good' } });
            expect((await good.hello()).type).to.equal('hello');
            await expect(Peer.open(url(srv), { headers: { 'x-tenant': 'evil' } })).to.reject('Upgrade refused: 403');
            await expect(Peer.open(url(srv), { headers: { 'x-tenant': 'busy' } })).to.reject('Upgrade refused: 429');
            await expect(Peer.open(url(srv), { headers: { 'x-tenant': 'broken' } })).to.reject('Upgrade refused: 500');
            await expect(Peer.open(url(srv))).to.reject('Upgrade refused: 403');
            expect(seen[0]).to.equal({ address: '127.0.0.1', header: 'good' });
            expect(seen).to.have.length(5);
            expect(srv.pulseStats()).to.include({ sockets: 1, pendingUpgrades: 0 });

            good.close();
            await srv.stop();
        });

        it('refuses an upgrade that was still being decided when the server stopped', async () => {

            const decide = gate();
            let asked = false;
            const srv = await server({
                onUpgrade: async () => {

                    asked = true;
                    await decide.promise;
                    return true;
                }
            });
            await srv.start();

            const refused = Peer.open(url(srv)).then(() => null, (err: Error) => err);
            await until(() => asked);
            expect(srv.pulseStats().pendingUpgrades).to.equal(1);
            const stopping = srv.stop({ timeout: 1000 });
            await wait(10);
            decide.open();
            expect((await refused)!.message).to.match(/Upgrade refused: 503|socket hang up/);      // hapi may drop the connection first
            await stopping;
            expect(srv.pulseStats().sockets).to.equal(0);
            expect(srv.pulseStats().pendingUpgrades).to.equal(0);
        });

        it('closes a socket that does not say hello in time (4000)', async () => {

            // Long enough that the bad frame is answered first on a loaded machine
            const srv = await server({ auth: { type: 'direct', timeout: 1000 } });
            await srv.start();

            const opening = Date.now();
            const peer = await Peer.open(url(srv));
            peer.send('null');
            expect((await peer.next()).statusCode).to.equal(400);
            expect(await peer.closedWith(5000)).to.equal({ code: 4000, reason: 'Hello timeout' });
            expect(Date.now() - opening).to.be.at.least(1000 - 10);          // at the timeout, not before
            await until(() => srv.pulseStats().sockets === 0);
            await srv.stop();
        });
    });

    describe('outbound high-water mark', () => {

        const slowConsumer = async (stalledFirst: boolean): Promise<void> => {

            const size = 8 * 1024;
            const srv = await server({ limits: { maxBufferedBytes: MiB }, closeTimeout: 200 });
            srv.subscription('/feed');
            const cut: unknown[] = [];
            srv.events.on('log', (event) => {

                if (event.tags.includes('slow-consumer')) {
                    cut.push(event.data);
                }
            });
            await srv.start();

            const healthy: { peer: Peer; got: number[] }[] = [];
            const addHealthy = async (): Promise<void> => {

                const peer = await Peer.open(url(srv));
                const got: number[] = [];
                peer.ws.on('message', (data) => {

                    const frame = JSON.parse(data.toString());
                    if (frame.type === 'pub') {
                        got.push(frame.message.n);
                    }
                });
                await peer.hello({ subs: ['/feed'] });
                healthy.push({ peer, got });
            };

            const addStalled = async (): Promise<Peer> => {

                const peer = await Peer.open(url(srv));
                await peer.hello({ subs: ['/feed'] });
                (peer.ws as any)._socket.pause();                         // stops reading; the kernel buffers fill up
                return peer;
            };

            let stalled: Peer;
            if (stalledFirst) {
                stalled = await addStalled();
                await addHealthy();
                await addHealthy();
            }
            else {
                await addHealthy();
                await addHealthy();
                stalled = await addStalled();
            }

            expect(srv.pulseStats()).to.include({ sockets: 3, subscriptions: 3 });

            // Publish in batches the healthy clients keep up with, until the stalled one is cut off (bounded).
            const padding = 'p'.repeat(size);
            let sent = 0;
            const publishBatch = async (): Promise<void> => {

                for (let i = 0; i < 8; ++i) {
                    await srv.publish('/feed', { n: sent++, padding });
                }

                await until(() => healthy.every(({ got }) => got.length === sent), 5000, 'healthy clients to keep up');
            };

            while (!cut.length && sent < 64 * MiB / size) {
                await publishBatch();
            }

            expect(cut).to.have.length(1);
            await until(() => srv.pulseStats().sockets === 2, 2000, 'the stalled socket to be terminated');

            for (let i = 0; i < 10; ++i) {
                await publishBatch();
            }

            const expected = Array.from({ length: sent }, (_, n) => n);
            for (const { peer, got } of healthy) {
                expect(got).to.equal(expected);
                expect(peer.closed).to.be.null();
                peer.close();
            }

            stalled.ws.terminate();
            await srv.stop();
        };

        it('cuts off a client that stops reading; the others get every message in order (stalled subscribed first)', async () => {

            await slowConsumer(true);
        });

        it('cuts off a client that stops reading; the others get every message in order (stalled subscribed last)', async () => {

            await slowConsumer(false);
        });

        it('closes with 4003 a socket still behind when the next message comes, and the client sees it once it reads again', async () => {

            const srv = await server({ limits: { maxBufferedBytes: 1024 }, closeTimeout: 5000 });
            srv.route({ method: 'GET', path: '/big', handler: () => 'x'.repeat(8 * MiB) });
            await srv.start();

            const client = new Nes.Client(url(srv));
            await client.connect({ reconnect: false });
            const closed = new Promise<{ code: number }>((resolve) => {

                client.onDisconnect = (_willReconnect: boolean, log: { code: number }) => resolve(log);
            });

            // One message larger than the mark still goes to a client that reads it.
            expect((await client.request('/big')).payload).to.have.length(8 * MiB);

            // Then it stops reading: once the kernel buffers are full, the backlog passes the mark and the
            // next message cuts it off.
            const raw = client._ws._socket;
            raw.pause();
            let sent = 0;
            await srv.eachSocket(async (socket) => {

                while (socket.isOpen() && sent < 256) {
                    await socket.send('y'.repeat(MiB));
                    ++sent;
                    await new Promise((resolve) => setImmediate(resolve));
                }
            });

            expect(sent).to.be.below(256);
            const updates: unknown[] = [];
            client.onUpdate = (message: unknown) => updates.push(message);
            raw.resume();
            expect((await closed).code).to.equal(4003);
            expect(updates.length).to.be.below(sent);                    // what was over the mark never went out
            await srv.stop();
        });
    });

    it('validates limit options', async () => {

        await expect(server({ limits: { maxPayload: 10 } })).to.reject(/maxPayload/);
        await expect(server({ limits: { rate: { messages: 0, interval: 10 } } })).to.reject(/messages/);
        await expect(server({ limits: { maxBufferedBytes: 'x' } })).to.reject(/maxBufferedBytes/);
    });

    it('validates the broker option at registration: an object with the broker methods', async () => {

        await expect(server({ broker: 'redis://127.0.0.1:6379' })).to.reject('Invalid hapi-pulse configuration: "broker" must be of type object');
        const methods = { start: () => { }, stop: () => { }, publish: () => { }, broadcast: () => { }, subscribe: () => { }, unsubscribe: () => { } };
        await expect(server({ broker: methods })).to.reject('Invalid hapi-pulse configuration: "broker.recover" is required');
        await expect(server({ broker: { ...methods, recover: 1 } })).to.reject('Invalid hapi-pulse configuration: "broker.recover" must be of type function');
        const srv = await server({ broker: new MemoryBroker() });          // methods on the prototype are found
        await srv.start();
        await srv.stop();
    });
});

