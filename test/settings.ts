// Plugin options through registration: the value the schema returns (defaults filled in, conversions done) is
// the one the server runs with.

import * as Code from '@hapi/code';
import type * as Hapi from '@hapi/hapi';
import * as Lab from '@hapi/lab';

import { MemoryBroker } from '../lib';
import type { BrokerSink } from '../lib';
import { Peer, server, url } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

const user = (srv: Hapi.Server): void => {

    srv.auth.scheme('user', () => ({ authenticate: (_request: Hapi.Request, h: Hapi.ResponseToolkit) => h.authenticated({ credentials: { user: 'john' } }) }));
    srv.auth.strategy('user', 'user');
};

describe('settings', () => {

    it('runs with the values the schema converted', async () => {

        const srv = await server({ heartbeat: { interval: '4000', timeout: '3000' } });
        await srv.start();

        const peer = await Peer.open(url(srv));
        expect((await peer.hello()).heartbeat).to.equal({ interval: 4000, timeout: 3000 });
        peer.close();
        await srv.stop();
    });

    it('lower-cases the header names it is given', async () => {

        const srv = await server({ headers: ['X-Custom'] });
        srv.route({ method: 'GET', path: '/', handler: (request, h) => h.response('ok').header('X-Custom', 'v').header('X-Other', 'w') });
        await srv.start();

        const peer = await Peer.open(url(srv));
        await peer.hello();
        const reply = await peer.request({ type: 'request', id: 2, method: 'GET', path: '/' });
        expect(reply.headers).to.equal({ 'x-custom': 'v' });
        peer.close();
        await srv.stop();
    });

    it('refuses null where an option does not allow it', async () => {

        await expect(server({ heartbeat: null })).to.reject('Invalid hapi-pulse configuration: "heartbeat" must be of type object');
        await expect(server({ auth: null })).to.reject('Invalid hapi-pulse configuration: "auth" must be of type object');
        await server({ headers: null, auth: { domain: null, ttl: null } });
    });

    it('fills in the defaults of a partly given option', async () => {

        const srv = await server({ heartbeat: { interval: 20000 } });
        await srv.start();

        const peer = await Peer.open(url(srv));
        expect((await peer.hello()).heartbeat).to.equal({ interval: 20000, timeout: 5000 });
        peer.close();
        await srv.stop();
    });

    it('checks auth.minAuthVerifyInterval against the heartbeat interval in force, the default one included', async () => {

        await expect(server({ auth: { minAuthVerifyInterval: 1000 } })).to.reject('Invalid hapi-pulse configuration: "auth.minAuthVerifyInterval" must be greater than or equal to ref:...heartbeat.interval');
        await expect(server({ heartbeat: { interval: 2000, timeout: 1000 }, auth: { minAuthVerifyInterval: 1000 } })).to.reject(/minAuthVerifyInterval/);
        await server({ heartbeat: { interval: 500, timeout: 100 }, auth: { minAuthVerifyInterval: 1000 } });
        await server({ heartbeat: false, auth: { minAuthVerifyInterval: 1000 } });
        await expect(server({ heartbeat: false, auth: { minAuthVerifyInterval: 0 } })).to.reject(/minAuthVerifyInterval/);
    });

    it('sets the auth cookie without a Path when auth.path is null', async () => {

        for (const [path, expected] of [[undefined, 'Path=/'], ['/app', 'Path=/app'], [null, null]] as const) {
            const srv = await server({ auth: { type: 'cookie', route: 'user', isSecure: false, path } }, 'pulse', user);
            const res = await srv.inject('/nes/auth');
            const cookie = (res.headers['set-cookie'] as string[])[0]!;
            const attributes = cookie.split('; ').filter((attribute) => attribute.startsWith('Path='));
            expect(attributes).to.equal(expected ? [expected] : []);
        }
    });

    it('runs the broker object it was given, not a copy', async () => {

        class Recording extends MemoryBroker {

            started: BrokerSink | null = null;

            override start(sink: BrokerSink): Promise<void> {

                this.started = sink;
                return super.start(sink);
            }
        }

        const broker = new Recording();
        const srv = await server({ broker });
        await srv.start();
        expect(broker.started).to.exist();
        await srv.stop();
    });
});
