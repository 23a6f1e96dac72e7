// The Redis broker's waits for its own publishes to come back (lib/brokers/redis/echoes.ts), without Redis.

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import { Echoes } from '../lib/brokers/redis/echoes';
import { wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

describe('redis broker echoes', () => {

    it('resolves a publish whose own copy never comes back after the timeout', async () => {

        const echoes = new Echoes(200);

        // An own publish that came back settles every earlier one that did not (its path was left meanwhile)
        const lost = echoes.wait(echoes.next());
        const found = echoes.next();
        const back = echoes.wait(found);
        echoes.echoed(found, undefined);
        await lost;
        await back;

        const started = Date.now();
        const first = echoes.wait(echoes.next());
        await wait(120);
        const second = echoes.wait(echoes.next());
        await first;
        expect(Date.now() - started).to.be.within(180, 1000);               // bounded by the 200 ms timeout, not by luck
        await second;
        expect(Date.now() - started).to.be.within(300, 1500);
    });

    it('resolves once the local delivery settled, failed or not; at once when not sent or when the connection is lost', async () => {

        const echoes = new Echoes(60000);
        const order: string[] = [];

        let deliver!: () => void;
        const delivered = new Promise<void>((resolve) => {

            deliver = resolve;
        });

        const seq = echoes.next();
        const waiting = echoes.wait(seq).then(() => order.push('delivered'));
        echoes.echoed(seq, delivered);
        await wait(20);
        expect(order).to.equal([]);
        deliver();
        await waiting;

        const failing = echoes.next();
        const failed = echoes.wait(failing);
        echoes.echoed(failing, Promise.reject(new Error('filter')));
        await failed;

        echoes.echoed(echoes.next(), undefined);                             // nobody waits for it

        const unsent = echoes.next();
        const cancelled = echoes.wait(unsent);
        echoes.cancel(unsent);
        await cancelled;

        const started = Date.now();
        const pending = [echoes.wait(echoes.next()), echoes.wait(echoes.next())];
        echoes.settleAll();
        await Promise.all(pending);
        expect(Date.now() - started).to.be.below(1000);
        expect(order).to.equal(['delivered']);
    });
});
