// Missed-message recovery on one node, over the wire: positions, replay, "cannot recover", filters,
// and publishes racing the replay.

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import { Peer, server, url, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const pubs = (peer: Peer): any[] => peer.frames.map((frame) => JSON.parse(frame)).filter((message) => message.type === 'pub');

describe('recovery extension', () => {

    it('replays what a client missed, in order, exactly once', async () => {

        const srv = await server();
        srv.subscription('/item/{id}', { history: { size: 50, ttl: 60000 } });
        srv.subscription('/plain');
        await srv.start();

        const first = await Peer.open(url(srv));
        const hello = await first.hello({ subs: ['/item/1', '/plain'], pulse: { recovery: true } });
        expect(hello.pulse.recovery).to.be.true();
        const start = hello.pulse.positions['/item/1'];
        expect(start.offset).to.equal(0);
        expect(hello.pulse.positions['/plain']).to.not.exist();            // no history, no position

        await srv.publish('/item/1', 'a');
        await srv.publish('/plain', 'p');
        await until(() => pubs(first).length === 2);
        const epoch = pubs(first)[0].position.epoch;                       // the history starts with the first publish
        expect(pubs(first)[0]).to.equal({ type: 'pub', path: '/item/1', message: 'a', position: { epoch, offset: 1 } });
        expect(pubs(first)[1]).to.equal({ type: 'pub', path: '/plain', message: 'p' });
        first.close();
        await until(() => first.closed !== null);

        for (let i = 0; i < 10; ++i) {
            await srv.publish('/item/1', `missed-${i}`);
        }

        const second = await Peer.open(url(srv));
        const back = await second.hello({ subs: ['/item/1'], pulse: { recovery: true, positions: { '/item/1': { epoch, offset: 1 } } } });
        expect(back.pulse.recovered).to.equal({ '/item/1': true });
        expect(back.pulse.positions['/item/1']).to.equal({ epoch, offset: 11 });
        await srv.publish('/item/1', 'live');
        await until(() => pubs(second).length === 11);
        expect(pubs(second).map((pub) => pub.message)).to.equal([...Array.from({ length: 10 }, (_, i) => `missed-${i}`), 'live']);
        expect(pubs(second).map((pub) => pub.position.offset)).to.equal([2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

        second.close();
        await srv.stop();
    });

    it('says when it cannot recover (trimmed history or another epoch)', async () => {

        const srv = await server();
        srv.subscription('/feed', { history: { size: 3, ttl: 60000 } });
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello({ subs: ['/feed'], pulse: { recovery: true } });
        for (let i = 0; i < 6; ++i) {
            await srv.publish('/feed', i);
        }

        await until(() => pubs(peer).length === 6);
        const epoch = pubs(peer)[0].position.epoch;

        const late = await Peer.open(url(srv));
        await late.hello({ pulse: { recovery: true } });
        const trimmed = await late.reply({ type: 'sub', id: 2, path: '/feed', position: { epoch, offset: 1 } });
        expect(trimmed).to.equal({ type: 'sub', id: 2, path: '/feed', pulse: { position: { epoch, offset: 6 }, recovered: false } });
        late.close();

        const other = await Peer.open(url(srv));
        const reply = await other.hello({ subs: ['/feed'], pulse: { recovery: true, positions: { '/feed': { epoch: 'elsewhere', offset: 5 } } } });
        expect(reply.pulse.recovered).to.equal({ '/feed': false });
        await wait(20);
        expect(pubs(other)).to.equal([]);                                  // nothing replayed from a foreign epoch

        const ahead = await Peer.open(url(srv));
        const future = await ahead.hello({ subs: ['/feed'], pulse: { recovery: true, positions: { '/feed': { epoch, offset: 99 } } } });
        expect(future.pulse.recovered).to.equal({ '/feed': false });

        const fresh = await Peer.open(url(srv));
        const recent = await fresh.hello({ subs: ['/feed'], pulse: { recovery: true, positions: { '/feed': { epoch, offset: 4 } } } });
        expect(recent.pulse.recovered).to.equal({ '/feed': true });
        await until(() => pubs(fresh).length === 2);
        expect(pubs(fresh).map((pub) => pub.message)).to.equal([4, 5]);

        for (const each of [peer, other, ahead, fresh]) {
            each.close();
        }

        await srv.stop();
    });

    it('expires history by ttl', async () => {

        const srv = await server();
        srv.subscription('/short', { history: { size: 100, ttl: 30 } });
        await srv.start();

        const peer = await Peer.open(url(srv));
        const hello = await peer.hello({ pulse: { recovery: true } });
        expect(hello.pulse).to.equal({ recovery: true, expiry: false });
        await srv.publish('/short', 'old');
        await wait(60);
        await srv.publish('/short', 'new');
        const reply = await peer.reply({ type: 'sub', id: 2, path: '/short', position: { epoch: (await srv.publish('/short', 'x'), 'unknown'), offset: 0 } });
        expect(reply.pulse.recovered).to.be.false();

        peer.close();
        await srv.stop();
    });

    it('applies filters, overrides and user targeting to replayed messages', async () => {

        const srv = await server();
        srv.subscription('/room/{id}', {
            history: { size: 10, ttl: 60000 },
            filter: async (_path, message: { hide?: boolean; rewrite?: boolean }, options) => {

                await wait(1);
                if (message.hide) {
                    return false;
                }

                return message.rewrite ? { override: { rewritten: options.params.id, internal: options.internal } } : true;
            }
        });
        await srv.start();

        const peer = await Peer.open(url(srv));
        const hello = await peer.hello({ subs: ['/room/a'], pulse: { recovery: true } });
        const since = hello.pulse.positions['/room/a'];
        peer.close();
        await until(() => peer.closed !== null);

        await srv.publish('/room/a', { hide: true });
        await srv.publish('/room/a', { rewrite: true }, { internal: 7 });
        await srv.publish('/room/a', { plain: true });

        const back = await Peer.open(url(srv));
        await back.hello({ subs: ['/room/a'], pulse: { recovery: true, positions: { '/room/a': since } } });
        await until(() => pubs(back).length === 2);
        expect(pubs(back).map((pub) => [pub.message, pub.position.offset])).to.equal([[{ rewritten: 'a', internal: 7 }, 2], [{ plain: true }, 3]]);

        back.close();
        await srv.stop();
    });

    it('neither loses nor duplicates publishes racing the replay', async () => {

        const srv = await server();
        srv.subscription('/race', {
            history: { size: 1000, ttl: 60000 },
            filter: () => new Promise((resolve) => setTimeout(() => resolve(true), 1))          // slow replay
        });
        await srv.start();

        const peer = await Peer.open(url(srv));
        const hello = await peer.hello({ subs: ['/race'], pulse: { recovery: true } });
        const since = hello.pulse.positions['/race'];
        peer.close();
        await until(() => peer.closed !== null);

        for (let i = 1; i <= 50; ++i) {
            await srv.publish('/race', i);
        }

        const back = await Peer.open(url(srv));
        back.send({ type: 'hello', id: 1, version: '2', subs: ['/race'], pulse: { recovery: true, positions: { '/race': since } } });
        const racing: Promise<void>[] = [];
        for (let i = 51; i <= 100; ++i) {
            racing.push(srv.publish('/race', i));
            await wait(0);
        }

        await Promise.all(racing);
        await until(() => pubs(back).length >= 100, 5000);
        await wait(30);
        expect(pubs(back).map((pub) => pub.message)).to.equal(Array.from({ length: 100 }, (_, i) => i + 1));

        back.close();
        await srv.stop();
    });

    it('does not deliver twice a pub that was replayed while its live copy waited on an async filter', async () => {

        const srv = await server();
        let slowSocket: unknown = null;
        srv.subscription('/room', {
            history: { size: 100, ttl: 60000 },
            filter: async (_path, message, { socket }) => {

                if (message === 'slow' && socket === slowSocket) {
                    await wait(300);                                // holds the topic's filter queue
                }

                return true;
            }
        });
        await srv.start();

        const other = await Peer.open(url(srv));
        await other.hello({ subs: ['/room'] });
        await srv.eachSocket((socket) => {

            slowSocket = socket;
        });

        const first = await Peer.open(url(srv));
        const since = (await first.hello({ subs: ['/room'], pulse: { recovery: true } })).pulse.positions['/room'];
        first.close();
        await until(() => first.closed !== null);
        await wait(20);

        const published = [srv.publish('/room', 'slow'), srv.publish('/room', 'second')];
        await wait(10);

        const back = await Peer.open(url(srv));
        const hello = await back.hello({ subs: ['/room'], pulse: { recovery: true, positions: { '/room': since } } });
        expect(hello.pulse.recovered).to.equal({ '/room': true });

        await Promise.all(published);
        await srv.publish('/room', 'third');
        await until(() => pubs(back).length >= 3);
        await wait(50);
        expect(pubs(back).map((pub) => [pub.message, pub.position.offset])).to.equal([['slow', 1], ['second', 2], ['third', 3]]);

        other.close();
        back.close();
        await srv.stop();
    });

    it('keeps the stock nes wire format for clients that did not ask', async () => {

        const srv = await server();
        srv.subscription('/item/{id}', { history: { size: 5, ttl: 1000 } });
        await srv.start();
        const peer = await Peer.open(url(srv));
        await peer.hello({ subs: ['/item/1'] });
        await srv.publish('/item/1', 'x');
        await until(() => peer.frames.length === 2);
        expect(peer.frames[0]).to.not.contain('pulse');
        expect(peer.frames[1]).to.equal('{"type":"pub","path":"/item/1","message":"x"}');
        expect(await peer.reply({ type: 'sub', id: 2, path: '/item/2', position: { epoch: 'e', offset: 1 } })).to.equal({ type: 'sub', id: 2, path: '/item/2' });
        peer.close();
        await srv.stop();
    });
});

describe('recovery edge cases', () => {

    it('replays nothing for a repeated sub, and nothing after an unsub sent during the replay', async () => {

        const srv = await server();
        let slow = false;
        srv.subscription('/h', {
            history: { size: 50, ttl: 60000 },
            filter: async () => {

                if (slow) {
                    await wait(30);
                }

                return true;
            }
        });
        await srv.start();

        const peer = await Peer.open(url(srv));
        const hello = await peer.hello({ subs: ['/h'], pulse: { recovery: true } });
        const start = hello.pulse.positions['/h'];
        for (let i = 1; i <= 3; ++i) {
            await srv.publish('/h', i);
        }

        await until(() => pubs(peer).length === 3);
        expect(await peer.reply({ type: 'sub', id: 2, path: '/h', position: start })).to.equal({ type: 'sub', id: 2, path: '/h' });
        await wait(30);
        expect(pubs(peer)).to.have.length(3);                                 // nothing replayed twice

        // An unsub sent during the replay takes effect after it, in the order sent
        const back = await Peer.open(url(srv));
        await back.hello({ pulse: { recovery: true } });
        slow = true;
        back.send({ type: 'sub', id: 2, path: '/h', position: start });
        back.send({ type: 'unsub', id: 3, path: '/h' });
        await until(() => back.frames.some((frame) => frame.includes('"unsub"')));
        expect(back.frames.map((frame) => JSON.parse(frame).type)).to.equal(['hello', 'sub', 'pub', 'pub', 'pub', 'unsub']);
        expect(srv.pulseStats().subscriptions).to.equal(1);

        // A revoke during the replay stops it, and drops what was held meanwhile
        const third = await Peer.open(url(srv));
        await third.hello({ pulse: { recovery: true } });
        third.send({ type: 'sub', id: 2, path: '/h', position: start });
        await until(() => third.frames.some((frame) => frame.includes('"sub"')));
        await srv.publish('/h', 4);                                             // held while the replay runs
        await srv.eachSocket((socket) => socket.revoke('/h', null), { subscription: '/h' });
        await wait(150);
        const types = third.frames.map((frame) => JSON.parse(frame).type);
        expect(types.slice(types.indexOf('revoke') + 1)).to.equal([]);
        expect(types.filter((type) => type === 'pub').length).to.be.below(4);
        third.close();

        peer.close();
        back.close();
        await srv.stop();
    });
});
