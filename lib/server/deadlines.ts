// One-shot deadlines (credential expiry) for many members with one timer instead of one each: a deadline is rounded
// up to a slice (default 50 ms) and waits in that slice's bucket. When buckets come due their members are handled a
// chunk at a time, yielding to I/O in between, so that thousands due at once (tokens issued together) never hold
// the event loop together.

export interface Deadline<T> {
    readonly member: T;
    slice: number;                                   // -1 once fired or cancelled
    index: number;                                   // position in its bucket
}

export interface DeadlinesOptions<T> {
    readonly fire: (member: T) => void;
    readonly sliceMs?: number;
    readonly chunk?: number;                         // members handled before yielding to I/O (default 256)
}

const maxTimer = 2 ** 31 - 1;                       // setTimeout's longest delay

export class Deadlines<T> {

    private readonly sliceMs: number;
    private readonly chunk: number;
    private readonly buckets = new Map<number, Array<Deadline<T>>>();
    private readonly slices: number[] = [];          // min-heap of the slices in buckets
    private timer: NodeJS.Timeout | null = null;
    private timerSlice = Infinity;
    private due: Array<Deadline<T>> = [];             // taken from due buckets, being fired
    private at = 0;
    private draining = false;                        // from a timer until every due deadline fired

    constructor(private readonly options: DeadlinesOptions<T>) {

        this.sliceMs = options.sliceMs ?? 50;
        this.chunk = options.chunk ?? 256;
    }

    // `member` is handed to fire() once Date.now() >= at (at most one slice later).
    add(member: T, at: number): Deadline<T> {

        const slice = Math.ceil(at / this.sliceMs);
        let bucket = this.buckets.get(slice);
        if (!bucket) {
            bucket = [];
            this.buckets.set(slice, bucket);
            this.push(slice);
        }

        const deadline: Deadline<T> = { member, slice, index: bucket.length };
        bucket.push(deadline);
        if (slice < this.timerSlice && !this.draining) {
            this.schedule();
        }

        return deadline;
    }

    cancel(deadline: Deadline<T>): void {

        const slice = deadline.slice;
        deadline.slice = -1;
        const bucket = this.buckets.get(slice);
        if (!bucket) {                                            // fired, cancelled, or being fired
            return;
        }

        const last = bucket.pop()!;
        if (last !== deadline) {
            bucket[deadline.index] = last;
            last.index = deadline.index;
        }

        if (!bucket.length) {
            this.buckets.delete(slice);                           // its heap entry goes when it comes up
        }

        if (!this.buckets.size && !this.draining) {               // nothing left to wait for: no timer
            clearTimeout(this.timer!);
            this.timer = null;
            this.timerSlice = Infinity;
            this.slices.length = 0;
        }
    }

    private schedule(): void {

        clearTimeout(this.timer!);
        this.timer = null;
        this.timerSlice = Infinity;
        while (this.slices.length && !this.buckets.has(this.slices[0]!)) {
            this.pop();                                           // emptied by cancel()
        }

        if (!this.slices.length) {
            return;
        }

        this.timerSlice = this.slices[0]!;
        const delay = this.timerSlice * this.sliceMs - Date.now();
        this.timer = setTimeout(this.fire, Math.min(Math.max(delay, 0), maxTimer));
    }

    private readonly fire = (): void => {

        this.timer = null;
        this.timerSlice = Infinity;
        this.draining = true;
        const now = Date.now();
        while (this.slices.length && this.slices[0]! * this.sliceMs <= now) {
            const slice = this.pop();
            const bucket = this.buckets.get(slice);
            if (bucket) {
                this.buckets.delete(slice);
                for (const deadline of bucket) {
                    this.due.push(deadline);
                }
            }
        }

        this.drain();
    };

    private readonly drain = (): void => {

        const end = Math.min(this.due.length, this.at + this.chunk);
        for (; this.at < end; ++this.at) {
            const deadline = this.due[this.at]!;
            if (deadline.slice !== -1) {
                deadline.slice = -1;
                this.options.fire(deadline.member);
            }
        }

        if (this.at < this.due.length) {
            setImmediate(this.drain);
            return;
        }

        this.due = [];
        this.at = 0;
        this.draining = false;
        this.schedule();
    };

    // ---- The heap of slices ----

    private push(slice: number): void {

        const heap = this.slices;
        let i = heap.push(slice) - 1;
        while (i > 0) {
            const parent = (i - 1) >> 1;
            if (heap[parent]! <= slice) {
                break;
            }

            heap[i] = heap[parent]!;
            i = parent;
        }

        heap[i] = slice;
    }

    private pop(): number {

        const heap = this.slices;
        const top = heap[0]!;
        const last = heap.pop()!;
        if (heap.length) {
            let i = 0;
            for (;;) {
                const left = 2 * i + 1;
                if (left >= heap.length) {
                    break;
                }

                const child = left + 1 < heap.length && heap[left + 1]! < heap[left]! ? left + 1 : left;
                if (heap[child]! >= last) {
                    break;
                }

                heap[i] = heap[child]!;
                i = child;
            }

            heap[i] = last;
        }

        return top;
    }
}
