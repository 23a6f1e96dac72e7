// Message shapes the server children publish.

// A page of catalogue items whose JSON is about `bytes` long (for bytes >= ~300): a realistic publish, which
// compresses about as well as application JSON does. `seq` and `to` as in every benchmark message; ids, prices and
// stock change with `seq`, so that successive messages share their shape but not their values.
export const catalogue = (bytes: number, seq = 0, to = '/fan'): object => {

    const items: object[] = [];
    const message = { seq, to, items };
    for (let i = 0; JSON.stringify(message).length < bytes; ++i) {
        const n = seq * 53 + i;
        items.push({ id: 1000 + n, sku: `SKU-${(7919 + n * 104729) % 100000}`, name: `Item ${n}`, price: ((n * 37) % 1000) / 10, currency: 'EUR', stock: (n * 13) % 50, tags: ['new', n % 2 ? 'sale' : 'regular'], updatedAt: new Date(1700000000000 + n * 60000).toISOString() });
    }

    return message;
};
