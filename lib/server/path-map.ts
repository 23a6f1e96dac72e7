// A Map of string keys that holds its first entry inline: most sockets subscribe to one path or none, and a Map
// costs about 260 bytes even then (its hash table), this about 48. Past one entry it is a Map.

export class PathMap<V> implements ReadonlyMap<string, V> {

    private key: string | null = null;
    private value: V | undefined = undefined;
    private map: Map<string, V> | null = null;

    get size(): number {

        return this.map ? this.map.size : (this.key === null ? 0 : 1);
    }

    get(key: string): V | undefined {

        return this.map ? this.map.get(key) : (key === this.key ? this.value : undefined);
    }

    has(key: string): boolean {

        return this.map ? this.map.has(key) : key === this.key;
    }

    set(key: string, value: V): this {

        if (this.map) {
            this.map.set(key, value);
        }
        else if (this.key === null || this.key === key) {
            this.key = key;
            this.value = value;
        }
        else {
            this.map = new Map([[this.key, this.value as V], [key, value]]);
            this.key = null;
            this.value = undefined;
        }

        return this;
    }

    delete(key: string): boolean {

        if (this.map) {
            const deleted = this.map.delete(key);
            if (!this.map.size) {
                this.map = null;
            }

            return deleted;
        }

        if (key !== this.key) {
            return false;
        }

        this.key = null;
        this.value = undefined;
        return true;
    }

    *entries(): IterableIterator<[string, V]> {

        if (this.map) {
            yield* this.map;
        }
        else if (this.key !== null) {
            yield [this.key, this.value as V];
        }
    }

    *keys(): IterableIterator<string> {

        for (const [key] of this.entries()) {
            yield key;
        }
    }

    *values(): IterableIterator<V> {

        for (const [, value] of this.entries()) {
            yield value;
        }
    }

    forEach(each: (value: V, key: string, map: this) => void): void {

        for (const [key, value] of this.entries()) {
            each(value, key, this);
        }
    }

    [Symbol.iterator](): IterableIterator<[string, V]> {

        return this.entries();
    }
}
