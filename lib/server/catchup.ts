// Recovery of one (socket, path), in one place: while the socket subscribes to a history path its live pubs
// are held and the broker says where the path stands (and, for a recovery socket, what it missed); after the
// reply the missed pubs are replayed, then the held ones released (none twice); from then on a floor drops
// late live copies of what was already sent, until a newer pub goes by.

import type { HistoryOptions, PublishEnvelope, Recovery } from '../broker';
import type { Position } from '../protocol';
import type { Prepared } from './prepared';

// What recovery needs of a socket.
export interface CatchingUp {
    readonly recovery: boolean;                            // negotiated the recovery extension
    readonly subscriptions: ReadonlyMap<string, unknown>;  // path -> its topic
    catchups: Map<string, Catchup> | null;                 // made on the first history subscription
    sendPrepared(prepared: Prepared): void;                // sends at once, past any hold or floor
}

// What recovery needs of the server: subscribing, the history read, and replaying through the filters.
export interface RecoverySource<S extends CatchingUp> {
    subscriptions: {
        history(path: string): HistoryOptions | null;
        subscribe(socket: S, path: string): Promise<void>;
        unsubscribe(socket: S, path: string): Promise<void>;
        replay(socket: S, topic: unknown, envelopes: PublishEnvelope[]): Promise<void>;
    };
    recover(path: string, since: Position | null, history: HistoryOptions): Promise<Recovery>;
}

export class Catchup {

    held: Prepared[] | null = [];              // live pubs, while the missed ones are read and replayed
    floor: Position | null = null;             // once released: the last pub replayed or released
    recovery: Recovery | null = null;          // where the path stands (and what was missed), once read

    constructor(readonly path: string, readonly since: Position | undefined) { }

    // What the reply tells the client: where the path stands, and whether what it missed was recovered (only
    // when it said where it was).
    report(): { position: Position; recovered?: boolean } {

        const recovery = this.recovery!;
        return this.since ? { position: recovery.position, recovered: recovery.recovered } : { position: recovery.position };
    }
}

// Subscribes `socket` to `path`; on a history path also holds live pubs and reads where the path stands. Null for
// a path without history, or one the socket is already subscribed to (a repeated sub replays nothing).
export const subscribe = async <S extends CatchingUp>(source: RecoverySource<S>, socket: S, path: string, since: Position | undefined): Promise<Catchup | null> => {

    const history = !socket.subscriptions.has(path) ? source.subscriptions.history(path) : null;
    if (!history) {
        await source.subscriptions.subscribe(socket, path);
        return null;
    }

    const catchup = new Catchup(path, since);
    (socket.catchups ??= new Map()).set(path, catchup);
    try {
        await source.subscriptions.subscribe(socket, path);
        // What is held with an offset up to the position read was published before the reply (a broker healing
        // a gap delivers old publishes late): the socket starts after it.
        catchup.recovery = await source.recover(path, socket.recovery ? since ?? null : null, history);
        return catchup;
    }
    catch (err) {
        // A failed sub leaves nothing behind: a repeated one is handled like a first one.
        release(socket, catchup, null);
        await source.subscriptions.unsubscribe(socket, path);
        throw err;
    }
};

// After the reply: missed publishes in order, then the live ones held meanwhile, none twice.
export const catchUp = async <S extends CatchingUp>(source: RecoverySource<S>, socket: S, catchups: Catchup[]): Promise<void> => {

    for (const catchup of catchups) {
        const recovery = catchup.recovery!;
        const topic = socket.subscriptions.get(catchup.path);
        if (topic && catchup.since && recovery.recovered) {
            await source.subscriptions.replay(socket, topic, recovery.entries);
        }

        // Unsubscribed (or revoked) meanwhile: what was held is dropped.
        release(socket, catchup, socket.subscriptions.get(catchup.path) === topic && topic ? recovery.position : null);
    }
};

// Sends what was held with an offset after `position` (older ones were replayed), then goes live. A live copy
// of a replayed pub can still come later (queued behind an async filter, or a broker message slower than the
// history read): the floor drops those. Null drops what was held (the sub failed or went away).
export const release = (socket: CatchingUp, catchup: Catchup, position: Position | null): void => {

    if (socket.catchups?.get(catchup.path) !== catchup) {
        return;                                                 // forgotten: unsubscribed, or closed
    }

    const held = catchup.held!;                                 // each catchup is released once
    catchup.held = null;
    if (position === null) {
        forget(socket, catchup.path);
        return;
    }

    let floor = position.offset;
    for (const prepared of held) {
        if (prepared.offset > floor) {
            socket.sendPrepared(prepared);
            floor = prepared.offset;
        }
    }

    catchup.floor = { epoch: position.epoch, offset: floor };
}

// A live pub of a path the socket has a catchup on: false when it is held, or already sent (below the floor).
// The first pub past the floor ends the catchup.
export const admit = (socket: CatchingUp, prepared: Prepared): boolean => {

    const catchup = socket.catchups!.get(prepared.path!);
    if (!catchup) {
        return true;
    }

    if (catchup.held) {
        catchup.held.push(prepared);
        return false;
    }

    const floor = catchup.floor!;
    if (prepared.epoch === floor.epoch && prepared.offset <= floor.offset) {
        return false;
    }

    forget(socket, catchup.path);
    return true;
};

// Unsubscribed, revoked or done: nothing is kept for the path.
export const forget = (socket: CatchingUp, path: string): void => {

    if (socket.catchups?.delete(path) && !socket.catchups.size) {
        socket.catchups = null;
    }
};
