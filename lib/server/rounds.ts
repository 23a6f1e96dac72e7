// Periodic per-member work (heartbeat pings, credential checks) spread over its interval, with one timer for all
// members: they sit in `buckets` groups and every interval / buckets ms one group is visited. A member joins the
// group of the current slice, so it is first visited one interval after it joined (a new socket is not pinged
// before its hello), and then once per interval at that phase. No visit pass holds the event loop for more than
// `chunk` members before yielding to I/O, whatever the number of members.

// Names a number property of T where a member keeps its position (-1 while it is not a member).
export type SlotKey<T> = { [K in keyof T]: T[K] extends number ? K : never }[keyof T];

export interface RoundsOptions<T> {
    readonly interval: number;                        // ms between two visits of one member
    readonly visit: (member: T) => void;
    // A second visit of each bucket `after` ms (< interval) after the first, rounded up to the next bucket (a
    // heartbeat's timeout check); it also sees members that joined the bucket since, which the first visit missed.
    readonly followUp?: { readonly after: number; readonly visit: (member: T) => void };
    readonly slot: SlotKey<T>;
    readonly sliceMs?: number;                        // target ms between bucket visits (default 50)
    readonly chunk?: number;                          // members visited before yielding to I/O (default 256)
}

const defaultSliceMs = 50;
const defaultChunk = 256;

export class Rounds<T extends object> {

    readonly buckets: number;
    readonly sliceMs: number;                        // interval / buckets: a bucket's visits are this far apart
    private readonly groups: T[][];
    private readonly lag: number;                    // buckets between a visit and its follow-up
    private readonly chunk: number;
    private nextGroup = 0;                           // round-robin placement before start()
    private size = 0;
    private running = false;
    private origin = 0;                              // when bucket-visit number 0 was due
    private turn = 0;                                // the next bucket-visit number (bucket turn % buckets)
    private timer: NodeJS.Timeout | null = null;
    private due = Infinity;                          // turn the timer is set for
    private immediate: NodeJS.Immediate | null = null;
    private draining = false;                        // from a turn's timer until its visits are done
    private work: Array<{ members: T[]; visit: (member: T) => void }> = [];
    private at = 0;                                  // next index in work[0].members

    constructor(private readonly options: RoundsOptions<T>) {

        this.buckets = Math.max(1, Math.round(options.interval / (options.sliceMs ?? defaultSliceMs)));
        this.sliceMs = options.interval / this.buckets;
        this.groups = Array.from({ length: this.buckets }, () => []);
        this.lag = options.followUp ? Math.min(this.buckets, Math.ceil(options.followUp.after / this.sliceMs)) : 0;
        this.chunk = options.chunk ?? defaultChunk;
    }

    get count(): number {

        return this.size;
    }

    start(): void {

        this.running = true;
        this.origin = performance.now();
        this.turn = 0;
        this.work = [];
        this.at = 0;
        this.schedule();
    }

    stop(): void {

        this.running = false;
        clearTimeout(this.timer!);
        clearImmediate(this.immediate!);
        this.timer = this.immediate = null;
        this.due = Infinity;
        this.draining = false;
        this.work = [];
    }

    add(member: T): void {

        if (this.slotOf(member) !== -1) {
            return;
        }

        const group = this.place();
        const members = this.groups[group]!;
        this.setSlot(member, members.length * this.buckets + group);
        members.push(member);
        ++this.size;

        // The member's first visit is at least a round minus one turn away: a timer due before that finds it when it
        // looks for the next turn. One that sleeps past it (it skips empty turns), or none, is set again. (While a
        // turn is being visited, the timer is set once it is done.)
        if (this.running && !this.draining && this.due >= this.turn - 1 + this.buckets) {
            this.schedule();
        }
    }

    private place(): number {

        if (!this.running) {
            const group = this.nextGroup;
            this.nextGroup = (group + 1) % this.buckets;
            return group;
        }

        if (this.draining) {
            return (this.turn - 1) % this.buckets;                   // the group being visited: visited next round
        }

        if (!this.size) {                                            // asleep with nobody: start the count from now
            this.origin = performance.now();
            this.turn = 0;
        }

        const now = Math.floor((performance.now() - this.origin) / this.sliceMs);
        if (this.due <= now) {                                       // turns overdue (a busy loop): the group they reach last
            this.turn = this.due;                                    // (the turns before the overdue one are empty, and past)
            return (this.due - 1 + this.buckets) % this.buckets;
        }

        // The turns up to now had nothing to do (the timer sleeps past them): this one counts as done.
        this.turn = Math.max(this.turn, now + 1);
        return now % this.buckets;
    }

    delete(member: T): void {

        const slot = this.slotOf(member);
        if (slot === -1) {
            return;
        }

        const group = slot % this.buckets;
        const index = (slot - group) / this.buckets;
        const members = this.groups[group]!;
        const last = members.pop()!;
        if (last !== member) {
            members[index] = last;
            this.setSlot(last, slot);
        }

        this.setSlot(member, -1);
        --this.size;
    }

    has(member: T): boolean {

        return this.slotOf(member) !== -1;
    }

    private slotOf(member: T): number {

        return member[this.options.slot] as number;
    }

    private setSlot(member: T, slot: number): void {

        (member as Record<SlotKey<T>, number>)[this.options.slot] = slot;
    }

    // Sleeps until the next turn with something to do (none while there are no members).
    private schedule(): void {

        clearTimeout(this.timer!);
        this.timer = null;
        this.due = Infinity;
        if (!this.size) {
            return;
        }

        let turn = this.turn;
        while (!this.groups[turn % this.buckets]!.length && !(this.lag && this.groups[(turn - this.lag + this.buckets * 2) % this.buckets]!.length)) {
            ++turn;
        }

        this.due = turn;
        const delay = this.origin + turn * this.sliceMs - performance.now();
        this.timer = setTimeout(this.fire, Math.max(0, delay));
    }

    private readonly fire = (): void => {

        this.timer = null;
        this.draining = true;
        const turn = this.due;
        this.due = Infinity;
        this.turn = turn + 1;
        // Held up for more than a whole interval (a long synchronous task): go on from now rather than visit
        // every bucket at once to catch up.
        const now = performance.now();
        if (now - (this.origin + turn * this.sliceMs) > this.options.interval) {
            this.origin = now - turn * this.sliceMs;
        }

        // Members that join or leave during the visit are visited from the next turn on (never twice, never missed
        // once they are in): the visit works on a copy, and skips those that left meanwhile.
        const group = turn % this.buckets;
        if (this.lag && turn >= this.lag) {                         // nothing to follow up in the first turns
            const earlier = this.groups[(turn - this.lag + this.buckets * 2) % this.buckets]!;
            if (earlier.length) {
                this.work.push({ members: earlier.slice(), visit: this.options.followUp!.visit });
            }
        }

        const members = this.groups[group]!;
        if (members.length) {
            this.work.push({ members: members.slice(), visit: this.options.visit });
        }

        this.drain();
    };

    private readonly drain = (): void => {

        this.immediate = null;
        let budget = this.chunk;
        while (this.work.length && budget > 0) {
            const { members, visit } = this.work[0]!;
            const end = Math.min(members.length, this.at + budget);
            budget -= end - this.at;
            for (; this.at < end && this.running; ++this.at) {
                const member = members[this.at]!;
                if (this.slotOf(member) !== -1) {
                    visit(member);
                }
            }

            if (!this.running) {                                  // a visit stopped the rounds
                return;
            }

            if (this.at === members.length) {
                this.work.shift();
                this.at = 0;
            }
        }

        if (this.work.length) {
            this.immediate = setImmediate(this.drain);
            return;
        }

        this.draining = false;
        this.schedule();
    };
}
