// Credentials that expire: the server acts at expiry with no client traffic, warns clients that
// negotiated the extension, and a reauth moves the expiry.

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import { Nes, Peer, expiringBasic, expiringHeader, server, until, url, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const basic = expiringBasic;
const header = expiringHeader;

describe('credential expiry', () => {

    it('closes an idle socket when its credentials expire', async () => {

        const srv = await server({ auth: { type: 'direct' } }, 'pulse', basic);
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello({ auth: header('john', 80) });
        const started = Date.now();
        const closed = await peer.closedWith(5000);
        expect(closed).to.equal({ code: 4002, reason: 'Credentials expired' });
        expect(Date.now() - started).to.be.below(3000);                  // at the expiry, not at some later sweep

        const late = await Peer.open(url(srv));
        const refused = await late.hello({ auth: header('john', -5) });
        expect(refused.statusCode).to.equal(401);
        expect(refused.payload.message).to.equal('Credentials expired');
        await srv.stop();
    });

    it('warns extension clients, and a reauth keeps the socket and its subscriptions', async () => {

        // The reauth must make it within the notice: room for a slow round trip on a loaded machine
        const srv = await server({ auth: { type: 'direct', expiryNotice: 500 } }, 'pulse', basic);
        srv.subscription('/news');
        await srv.start();

        const peer = await Peer.open(url(srv));
        const hello = await peer.hello({ auth: header('john', 1000), subs: ['/news'], pulse: { expiry: true } });
        expect(hello.pulse.expiry).to.be.true();
        expect(hello.pulse.expiresAt).to.be.a.number();

        await until(() => peer.frames.some((frame) => frame.includes('"expiring"')), 3000);
        const warning = JSON.parse(peer.frames.find((frame) => frame.includes('"expiring"'))!);
        expect(warning).to.equal({ type: 'expiring', expiresAt: hello.pulse.expiresAt });

        expect(await peer.reply({ type: 'reauth', id: 2, auth: header('john', 'none') })).to.equal({ type: 'reauth', id: 2, pulse: { expiresAt: null } });
        await until(() => Date.now() > warning.expiresAt + 100, 3000, 'past the first expiry');
        expect(peer.closed).to.be.null();
        await srv.publish('/news', 'still here');
        await until(() => peer.frames.some((frame) => frame.includes('still here')));

        expect((await peer.reply({ type: 'reauth', id: 3, auth: header('bad', 1) })).statusCode).to.equal(401);
        expect((await peer.closedWith()).code).to.equal(4002);
        await srv.stop();
    });

    it('expires token auth with the iron ttl, for stock nes clients too', async () => {

        // The token must still be valid when the client connects, on a loaded machine too
        const srv = await server({ auth: { type: 'token', password: 'a-password-that-is-at-least-32-characters-long!', ttl: 1000 } }, 'pulse', basic);
        await srv.start();

        const sealed = Date.now();
        const res = await srv.inject({ url: '/nes/auth', headers: header('john', 'none').headers });
        const token = (res.result as { token: string }).token;

        const client = new Nes.Client(url(srv));
        const disconnected = new Promise<{ code: number }>((resolve) => {

            client.onDisconnect = (_willReconnect: boolean, log: { code: number }) => resolve(log);
        });

        await client.connect({ auth: token, reconnect: false });
        expect((await disconnected).code).to.equal(4002);
        expect(Date.now() - sealed).to.be.at.least(1000 - 10);          // expired with the token, not before

        await wait(20);
        const late = new Nes.Client(url(srv));
        const err: any = await expect(late.connect({ auth: token, reconnect: false })).to.reject();
        expect(err.statusCode).to.equal(401);
        await srv.stop();
    });

    it('uses auth.expiry to read the expiry', async () => {

        const srv = await server({ auth: { type: 'direct', expiry: () => Date.now() + 50 } }, 'pulse', basic);
        await srv.start();
        const peer = await Peer.open(url(srv));
        await peer.hello({ auth: header('john', 'none') });
        expect((await peer.closedWith()).code).to.equal(4002);
        await srv.stop();
    });
});
