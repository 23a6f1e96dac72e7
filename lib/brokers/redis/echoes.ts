// A node's own publishes whose copy it waits to receive back from Redis, so that publish() resolves once
// the local delivery is done. Redis sends back a connection's publishes in order: an own publish that did
// not come back before a later one (its path was left meanwhile) never will. None waits longer than `timeout`.

interface Waiter {
    resolve: () => void;
    at: number;
}

export class Echoes {

    private seq = 0;
    private readonly waiters = new Map<number, Waiter>();           // by sequence number: Map order = send order
    private sweepTimer: NodeJS.Timeout | null = null;

    constructor(private readonly timeout: number) { }

    // The sequence number of the next own message; of the first of the next `count` (numbered on from it).
    next(count = 1): number {

        this.seq += count;
        return this.seq - count + 1;
    }

    // Resolves once message `seq` came back and its local delivery settled, or at the latest after `timeout`.
    wait(seq: number): Promise<void> {

        return new Promise((resolve) => {

            this.waiters.set(seq, { resolve, at: Date.now() });
            this.sweepTimer ??= setTimeout(() => this.sweep(), this.timeout);
        });
    }

    echoed(seq: number, delivered: void | Promise<void>): void {

        const waiter = this.waiters.get(seq);
        this.waiters.delete(seq);
        this.settle(seq);
        if (waiter) {
            Promise.resolve(delivered).catch(() => { }).then(waiter.resolve);
        }
    }

    // Message `seq` was not sent: nothing to wait for.
    cancel(seq: number): void {

        this.waiters.get(seq)?.resolve();
        this.waiters.delete(seq);
    }

    // The connection that would bring them back is gone: nothing more will come back.
    settleAll(): void {

        this.settle(Infinity);
    }

    private settle(upTo: number): void {

        for (const [seq, waiter] of this.waiters) {
            if (seq > upTo) {
                break;
            }

            this.waiters.delete(seq);
            waiter.resolve();
        }

        if (!this.waiters.size && this.sweepTimer) {
            clearTimeout(this.sweepTimer);
            this.sweepTimer = null;
        }
    }

    private sweep(): void {

        this.sweepTimer = null;
        const oldest = Date.now() - this.timeout;
        for (const [seq, waiter] of this.waiters) {
            if (waiter.at > oldest) {
                break;
            }

            this.waiters.delete(seq);
            waiter.resolve();
        }

        if (this.waiters.size) {
            this.sweepTimer = setTimeout(() => this.sweep(), this.timeout);
        }
    }
}
