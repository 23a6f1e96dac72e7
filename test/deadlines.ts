// One-shot deadlines with one timer (credential expiry): never early, at most a slice late, a chunk at a time when
// many come due together, cancellable at any point.

import * as Code from '@hapi/code';
import * as Lab from '@hapi/lab';

import { Deadlines } from '../lib/server/deadlines';
import { libraryTimers, until, wait } from './helpers';

const { expect } = Code;
const lab = Lab.script();
export { lab };
const { describe, it } = lab;

describe('Deadlines', () => {

    it('fires each member once, never before its deadline, in deadline order', async () => {

        const fired: Array<{ name: number; at: number }> = [];
        const deadlines = new Deadlines<number>({ sliceMs: 20, fire: (name) => fired.push({ name, at: Date.now() }) });
        const now = Date.now();
        const due = [130, 40, 90, 40, 10, 170, 60];                        // out of order, two in one slice
        due.forEach((offset, name) => deadlines.add(name, now + offset));
        await until(() => fired.length === due.length, 3000, 'every deadline');
        await wait(60);
        expect(fired.length).to.equal(due.length);                          // once each

        for (const { name, at } of fired) {
            expect(at).to.be.at.least(now + due[name]!);
        }

        const order = fired.map((f) => due[f.name]!);
        expect(order).to.equal([...order].sort((a, b) => a - b));
    });

    it('fires a deadline already past at once', async () => {

        const fired: number[] = [];
        const deadlines = new Deadlines<number>({ fire: (name) => fired.push(name) });
        deadlines.add(1, Date.now() - 1000);
        await until(() => fired.length === 1, 1000, 'the past deadline');
    });

    it('fires many deadlines of one slice a chunk at a time', async () => {

        const runs: number[][] = [];
        let open = false;
        const deadlines = new Deadlines<number>({
            chunk: 10,
            fire: (name) => {

                if (!open) {
                    open = true;
                    runs.push([]);
                    queueMicrotask(() => (open = false));
                }

                runs[runs.length - 1]!.push(name);
            }
        });

        const at = Date.now() + 30;
        for (let i = 0; i < 25; ++i) {
            deadlines.add(i, at);
        }

        await until(() => runs.flat().length === 25, 3000, 'every deadline');
        expect(runs.map((run) => run.length)).to.equal([10, 10, 5]);
        expect(runs.flat()).to.equal(Array.from({ length: 25 }, (_, i) => i));
    });

    it('cancels deadlines, before they come due or while their slice is being fired, and keeps no timer for none', async () => {

        const timers = libraryTimers();
        try {
            const fired: number[] = [];
            const deadlines = new Deadlines<number>({
                chunk: 2,
                fire: (name) => {

                    fired.push(name);
                    if (name === 0) {
                        deadlines.cancel(later!);                         // in the same slice, a chunk later
                        deadlines.cancel(far!);                           // the only one left waiting
                        deadlines.add(9, Date.now() - 1);                 // already due: fired after this slice
                    }
                }
            });

            const at = Date.now() + 60;
            const far = deadlines.add(10, at + 60_000);
            const early = deadlines.add(8, at - 30);                      // the timer is set for it...
            deadlines.cancel(early);                                      // ...and finds its slice empty
            const first = deadlines.add(0, at);
            const gone = deadlines.add(1, at);
            deadlines.add(2, at);
            deadlines.add(3, at);
            const later = deadlines.add(4, at);
            deadlines.cancel(gone);                                       // another takes its place in the bucket
            deadlines.cancel(gone);                                       // twice: nothing more happens
            await until(() => fired.includes(9), 3000, 'the deadline added while firing');
            expect(fired).to.equal([0, 2, 3, 9]);                              // 3 took 1's place; 4 was cancelled
            deadlines.cancel(first);                                      // already fired: nothing happens

            const alone = deadlines.add(5, Date.now() + 10_000);
            const other = deadlines.add(6, Date.now() + 20_000);
            await until(() => timers.pending() === 1, 3000, 'one timer for both');
            deadlines.cancel(other);
            deadlines.cancel(alone);
            await until(() => timers.pending() === 0, 3000, 'no timer');   // nothing left to wait for

            deadlines.add(7, Date.now() + 20);                            // and it starts again
            await until(() => fired.includes(7), 3000, 'a new deadline');
        }
        finally {
            timers.stop();
        }
    });

    it('passes over a cancelled slice that comes due together with a live one', async () => {

        const fired: number[] = [];
        const deadlines = new Deadlines<number>({ sliceMs: 20, fire: (name) => fired.push(name) });
        const now = Date.now();
        deadlines.add(1, now + 20);
        deadlines.cancel(deadlines.add(2, now + 60));                    // its slice stays in the heap, empty
        while (Date.now() < now + 120) {
            // hold the event loop past both slices, so one timer finds both due
        }

        await until(() => fired.length === 1, 3000, 'the live deadline');
        await wait(60);
        expect(fired).to.equal([1]);
    });

    it('wakes up earlier for a deadline before the one it waits for', async () => {

        const fired: number[] = [];
        const deadlines = new Deadlines<number>({ fire: (name) => fired.push(name) });
        const far = deadlines.add(1, Date.now() + 60_000);
        deadlines.cancel(deadlines.add(3, Date.now() + 30_000));         // leaves an empty slice before the far one
        const added = Date.now();
        deadlines.add(2, added + 50);
        await until(() => fired.length === 1, 3000, 'the near deadline');
        expect(fired).to.equal([2]);
        deadlines.cancel(far);
    });
});
