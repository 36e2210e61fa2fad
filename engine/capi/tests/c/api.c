/*
 * The C API end to end: every operation of the synchronous and the asynchronous form, scans across
 * several pages, merge callbacks, statistics, concurrent threads, and (on a file) a reopen.
 *
 *   nvkv-api-test memory | file PATH | nvme PCI_ADDRESS
 */
/* mkstemp, ftruncate (POSIX) under -std=c11. */
#define _DEFAULT_SOURCE
#include "common.h"

#include <inttypes.h>
#include <pthread.h>
#include <unistd.h>

/* ---- asynchronous callbacks ---- */

struct tally {
    int done;
    int failed;
    int not_found;
    int mismatches;
    int64_t last_number;
    uint64_t mismatch_version;
    nvkv_async *ctx; /* for the callback that submits more */
    int chained;
};

static void count_cb(void *user, const nvkv_completion *c) {
    struct tally *t = user;
    t->done++;
    if (c->result == NVKV_NOT_FOUND) {
        t->not_found++;
    } else if (c->result == NVKV_VERSION_MISMATCH) {
        t->mismatches++;
        t->mismatch_version = c->write.version;
    } else if (c->result != NVKV_OK) {
        t->failed++;
    }
    t->last_number = c->number;
}

/* Checks that a get's value is "v<id-of-key>" as encoded in the user data. */
struct expect {
    const char *want;
    int ok;
};

static void get_cb(void *user, const nvkv_completion *c) {
    struct expect *e = user;
    e->ok = c->result == NVKV_OK && c->value_len == strlen(e->want) &&
            memcmp(c->value, e->want, c->value_len) == 0 && c->meta.version > 0;
}

/* Submits a second request from inside a callback (allowed: callbacks run outside the context's lock). */
static void chain_cb(void *user, const nvkv_completion *c) {
    struct tally *t = user;
    count_cb(user, c);
    if (!t->chained) {
        t->chained = 1;
        nvkv_result rc = nvkv_async_put(t->ctx, K("chained"), K("yes"), NULL, count_cb, t, NULL);
        if (rc != NVKV_OK) {
            t->failed++;
        }
    }
}

static void drain(nvkv_async *ctx) {
    size_t pending = 1, n = 0;
    for (int spins = 0; pending > 0; spins++) {
        OK(nvkv_async_wait(ctx, 100000, &n));
        OK(nvkv_async_pending(ctx, &pending));
        CHECK(spins < 10000);
    }
}

/* ---- merge: concatenate old and new ---- */

static uint8_t *concat(void *ctx, const uint8_t *key, size_t key_len, const uint8_t *old_value, size_t old_len,
                       const uint8_t *new_value, size_t new_len, size_t *out_len) {
    (void)key;
    (void)key_len;
    int *calls = ctx;
    __atomic_add_fetch(calls, 1, __ATOMIC_SEQ_CST);
    uint8_t *out = malloc(old_len + new_len + 1);
    if (!out) {
        return NULL;
    }
    memcpy(out, old_value, old_len);
    memcpy(out + old_len, new_value, new_len);
    *out_len = old_len + new_len;
    return out;
}

/* ---- threads ---- */

struct worker {
    nvkv_db *db;
    int id;
    int errors;
};

static void *work(void *arg) {
    struct worker *w = arg;
    char key[32], val[32], got[32];
    for (int i = 0; i < 300; i++) {
        int kl = snprintf(key, sizeof key, "t%d:%d", w->id, i);
        int vl = snprintf(val, sizeof val, "%d-%d", w->id, i);
        size_t len = 0;
        if (nvkv_put(w->db, (const uint8_t *)key, (size_t)kl, (const uint8_t *)val, (size_t)vl, NULL, NULL) !=
                NVKV_OK ||
            nvkv_get(w->db, (const uint8_t *)key, (size_t)kl, (uint8_t *)got, sizeof got, &len, NULL) !=
                NVKV_OK ||
            len != (size_t)vl || memcmp(got, val, len) != 0) {
            w->errors++;
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(nvkv_abi_version() == NVKV_ABI_VERSION);
    CHECK(strlen(nvkv_version()) > 0);
    nvkv_options o;
    nvkv_db *db = open_from_args(argc, argv, &o);

    /* put / get / meta */
    nvkv_write_result wr;
    OK(nvkv_put(db, K("alpha"), K("one"), NULL, &wr));
    CHECK(wr.applied && wr.version > 0);
    uint64_t v1 = wr.version;
    uint8_t buf[64];
    size_t len = 0;
    nvkv_meta m;
    OK(nvkv_get(db, K("alpha"), buf, sizeof buf, &len, &m));
    CHECK(len == 3 && memcmp(buf, "one", 3) == 0 && m.version == v1);
    /* exact fit, too small (size reported, buffer untouched), size query */
    OK(nvkv_get(db, K("alpha"), buf, 3, &len, NULL));
    memset(buf, 'x', sizeof buf);
    EXPECT_RC(nvkv_get(db, K("alpha"), buf, 2, &len, NULL), NVKV_BUFFER_TOO_SMALL);
    CHECK(len == 3 && buf[0] == 'x');
    EXPECT_RC(nvkv_get(db, K("alpha"), NULL, 0, &len, NULL), NVKV_BUFFER_TOO_SMALL);
    CHECK(len == 3);
    /* overwrite: a newer version */
    OK(nvkv_put(db, K("alpha"), K("two!"), NULL, &wr));
    CHECK(wr.applied && wr.version > v1);
    uint8_t *p = NULL;
    OK(nvkv_get_alloc(db, K("alpha"), &p, &len, &m));
    CHECK(p && len == 4 && memcmp(p, "two!", 4) == 0 && m.version == wr.version);
    nvkv_free(p);
    /* empty values */
    OK(nvkv_put(db, K("empty"), NULL, 0, NULL, NULL));
    OK(nvkv_get(db, K("empty"), NULL, 0, &len, NULL));
    CHECK(len == 0);
    OK(nvkv_get_alloc(db, K("empty"), &p, &len, NULL));
    CHECK(p != NULL && len == 0);
    nvkv_free(p);
    /* absent keys, deletes */
    EXPECT_RC(nvkv_get(db, K("nope"), buf, sizeof buf, &len, NULL), NVKV_NOT_FOUND);
    EXPECT_RC(nvkv_get_alloc(db, K("nope"), &p, &len, NULL), NVKV_NOT_FOUND);
    OK(nvkv_delete(db, K("empty"), NULL, &wr));
    CHECK(wr.applied);
    EXPECT_RC(nvkv_get(db, K("empty"), buf, sizeof buf, &len, NULL), NVKV_NOT_FOUND);
    OK(nvkv_delete(db, K("never-there"), NULL, &wr));
    CHECK(!wr.applied);

    /* durable write and caller timestamps (last writer wins: an older timestamp loses) */
    nvkv_write_opts dur = {.flags = NVKV_WRITE_DURABLE, .ts = 0};
    OK(nvkv_put(db, K("durable"), K("d"), &dur, &wr));
    CHECK(wr.applied);
    nvkv_write_opts ts = {.flags = NVKV_WRITE_TIMESTAMP, .ts = 1000};
    OK(nvkv_put(db, K("clock"), K("new"), &ts, &wr));
    CHECK(wr.applied && wr.ts == 1000);
    ts.ts = 999;
    OK(nvkv_put(db, K("clock"), K("old"), &ts, &wr));
    CHECK(!wr.applied);
    OK(nvkv_get(db, K("clock"), buf, sizeof buf, &len, NULL));
    CHECK(len == 3 && memcmp(buf, "new", 3) == 0);

    /* compare-and-swap */
    OK(nvkv_cas(db, K("lock"), NULL, K("held"), NULL, &wr));
    CHECK(wr.applied);
    uint64_t lockv = wr.version;
    EXPECT_RC(nvkv_cas(db, K("lock"), NULL, K("again"), NULL, &wr), NVKV_VERSION_MISMATCH);
    CHECK(!wr.applied && wr.version == lockv);
    uint64_t wrong = lockv + 100;
    EXPECT_RC(nvkv_cas(db, K("lock"), &wrong, K("x"), NULL, &wr), NVKV_VERSION_MISMATCH);
    CHECK(wr.version == lockv);
    OK(nvkv_cas(db, K("lock"), &lockv, K("passed"), NULL, &wr));
    CHECK(wr.applied && wr.version > lockv);
    lockv = wr.version;
    OK(nvkv_cas_delete(db, K("lock"), &lockv, NULL, &wr));
    EXPECT_RC(nvkv_get(db, K("lock"), buf, sizeof buf, &len, NULL), NVKV_NOT_FOUND);
    EXPECT_RC(nvkv_cas_delete(db, K("lock"), &lockv, NULL, &wr), NVKV_VERSION_MISMATCH);
    CHECK(wr.version == 0);

    /* increment */
    int64_t n = 0;
    OK(nvkv_incr(db, K("ctr"), 5, NULL, &n));
    CHECK(n == 5);
    OK(nvkv_incr(db, K("ctr"), -7, NULL, &n));
    CHECK(n == -2);
    OK(nvkv_incr(db, K("ctr"), 2, NULL, NULL));
    EXPECT_RC(nvkv_incr(db, K("alpha"), 1, NULL, &n), NVKV_NOT_AN_INTEGER);
    OK(nvkv_incr(db, K("big"), INT64_MAX, NULL, &n));
    EXPECT_RC(nvkv_incr(db, K("big"), 1, NULL, &n), NVKV_OVERFLOW);

    /* scans: 600 keys span three pages of the iterator */
    char key[32];
    for (int i = 0; i < 600; i++) {
        int kl = snprintf(key, sizeof key, "p:%04d", i);
        OK(nvkv_put(db, (const uint8_t *)key, (size_t)kl, (const uint8_t *)key, (size_t)kl, NULL, NULL));
    }
    nvkv_iter *it = NULL;
    OK(nvkv_scan(db, K("p:"), K("p;"), 0, &it));
    const uint8_t *k, *v;
    size_t kl, vl;
    int count = 0;
    nvkv_result rc;
    while ((rc = nvkv_iter_next(it, &k, &kl, &v, &vl)) == NVKV_OK) {
        int want = snprintf(key, sizeof key, "p:%04d", count);
        CHECK(kl == (size_t)want && memcmp(k, key, kl) == 0 && vl == kl && memcmp(v, k, kl) == 0);
        count++;
    }
    EXPECT_RC(rc, NVKV_END);
    CHECK(count == 600);
    EXPECT_RC(nvkv_iter_next(it, &k, &kl, NULL, NULL), NVKV_END);
    OK(nvkv_iter_free(&it));
    CHECK(it == NULL);
    OK(nvkv_scan(db, K("p:0300"), NULL, 0, 10, &it));
    count = 0;
    while (nvkv_iter_next(it, &k, &kl, NULL, NULL) == NVKV_OK) {
        count++;
    }
    CHECK(count == 10);
    OK(nvkv_iter_free(&it));

    /* statistics */
    size_t shards = 0;
    OK(nvkv_shard_count(db, &shards));
    CHECK(shards == 2);
    nvkv_stats total, s0, s1;
    OK(nvkv_sync(db));
    OK(nvkv_db_stats(db, &total));
    OK(nvkv_shard_stats(db, 0, &s0));
    OK(nvkv_shard_stats(db, 1, &s1));
    /* alpha durable clock ctr big + 600 */
    CHECK(total.shard == 2 && total.keys == 605 && s0.keys + s1.keys == total.keys);
    CHECK(total.cycles > 0);
    EXPECT_RC(nvkv_shard_stats(db, 2, &s0), NVKV_INVALID_ARGUMENT);

    /* asynchronous form */
    nvkv_async *ctx = NULL;
    OK(nvkv_async_new(db, &ctx));
    struct tally t = {0};
    t.ctx = ctx;
    for (int i = 0; i < 200; i++) {
        int kl2 = snprintf(key, sizeof key, "a:%03d", i);
        char val[16];
        int vl2 = snprintf(val, sizeof val, "v%d", i);
        nvkv_write_opts *wo = i % 50 == 0 ? &dur : NULL;
        OK(nvkv_async_put(ctx, (const uint8_t *)key, (size_t)kl2, (const uint8_t *)val, (size_t)vl2, wo, count_cb,
                          &t, NULL));
    }
    size_t pending = 0;
    OK(nvkv_async_pending(ctx, &pending));
    CHECK(pending <= 200);
    /* a synchronous call on the same thread while requests are in flight */
    OK(nvkv_get(db, K("alpha"), buf, sizeof buf, &len, NULL));
    drain(ctx);
    CHECK(t.done == 200 && t.failed == 0);
    struct expect ex[20];
    char wants[20][16];
    for (int i = 0; i < 20; i++) {
        int kl2 = snprintf(key, sizeof key, "a:%03d", i * 10);
        snprintf(wants[i], sizeof wants[i], "v%d", i * 10);
        ex[i].want = wants[i];
        ex[i].ok = 0;
        uint64_t id = 0;
        OK(nvkv_async_get(ctx, (const uint8_t *)key, (size_t)kl2, get_cb, &ex[i], &id));
        CHECK(id > 0);
    }
    memset(&t, 0, sizeof t);
    t.ctx = ctx;
    OK(nvkv_async_get(ctx, K("a:missing"), count_cb, &t, NULL));
    OK(nvkv_async_incr(ctx, K("actr"), 40, NULL, count_cb, &t, NULL));
    OK(nvkv_async_cas(ctx, K("alpha"), NULL, K("x"), 0, NULL, count_cb, &t, NULL));
    OK(nvkv_async_delete(ctx, K("a:199"), NULL, chain_cb, &t, NULL));
    OK(nvkv_async_get(ctx, K("alpha"), NULL, NULL, NULL)); /* no callback: fire and forget */
    drain(ctx);
    for (int i = 0; i < 20; i++) {
        CHECK(ex[i].ok);
    }
    CHECK(t.failed == 0 && t.not_found == 1 && t.mismatches == 1 && t.chained == 1);
    CHECK(t.mismatch_version > 0);
    CHECK(t.done == 5); /* missing, incr, cas, delete, chained put */
    OK(nvkv_get(db, K("chained"), buf, sizeof buf, &len, NULL));
    OK(nvkv_incr(db, K("actr"), 0, NULL, &n));
    CHECK(n == 40);
    size_t none = 7;
    OK(nvkv_async_poll(ctx, 0, &none));
    CHECK(none == 0);
    /* free runs the callbacks of requests still in flight */
    memset(&t, 0, sizeof t);
    OK(nvkv_async_put(ctx, K("late"), K("1"), &dur, count_cb, &t, NULL));
    OK(nvkv_async_free(&ctx));
    CHECK(ctx == NULL && t.done == 1 && t.failed == 0);

    /* batches: many requests queued, waited on once, each answer read; a batch is reused after clear */
    nvkv_batch *b = NULL;
    OK(nvkv_batch_new(db, &b));
    nvkv_completion c;
    size_t bl = 7;
    for (int round = 0; round < 3; round++) {
        char val[16];
        for (int i = 0; i < 100; i++) {
            int kl2 = snprintf(key, sizeof key, "b:%03d", i);
            int vl2 = snprintf(val, sizeof val, "r%d-%d", round, i);
            size_t idx = 999;
            OK(nvkv_batch_put(b, (const uint8_t *)key, (size_t)kl2, (const uint8_t *)val, (size_t)vl2,
                              i % 40 == 0 ? &dur : NULL, &idx));
            CHECK(idx == (size_t)i);
        }
        OK(nvkv_batch_wait(b));
        OK(nvkv_batch_len(b, &bl));
        CHECK(bl == 100);
        for (size_t i = 0; i < 100; i++) {
            OK(nvkv_batch_result(b, i, &c));
            CHECK(c.id == i && c.result == NVKV_OK && c.write.applied && c.write.version > 0);
        }
        OK(nvkv_batch_clear(b));
        OK(nvkv_batch_len(b, &bl));
        CHECK(bl == 0);
        /* read back what this round wrote, and one absent key; no wait: a result waits for its batch */
        for (int i = 0; i < 100; i++) {
            int kl2 = snprintf(key, sizeof key, "b:%03d", i);
            OK(nvkv_batch_get(b, (const uint8_t *)key, (size_t)kl2, NULL));
        }
        OK(nvkv_batch_get(b, K("b:absent"), NULL));
        for (int i = 0; i < 100; i++) {
            int vl2 = snprintf(val, sizeof val, "r%d-%d", round, i);
            OK(nvkv_batch_result(b, (size_t)i, &c));
            CHECK(c.value_len == (size_t)vl2 && memcmp(c.value, val, c.value_len) == 0 && c.meta.version > 0);
        }
        EXPECT_RC(nvkv_batch_result(b, 100, &c), NVKV_NOT_FOUND);
        CHECK(c.result == NVKV_NOT_FOUND && c.value == NULL);
        EXPECT_RC(nvkv_batch_result(b, 101, &c), NVKV_INVALID_ARGUMENT);
        /* all answers in one call: the same as one at a time */
        nvkv_completion all[101];
        OK(nvkv_batch_results(b, 0, all, 101));
        for (int i = 0; i < 100; i++) {
            int vl2 = snprintf(val, sizeof val, "r%d-%d", round, i);
            CHECK(all[i].id == (uint64_t)i && all[i].result == NVKV_OK);
            CHECK(all[i].value_len == (size_t)vl2 && memcmp(all[i].value, val, all[i].value_len) == 0);
        }
        CHECK(all[100].result == NVKV_NOT_FOUND && all[100].value == NULL);
        OK(nvkv_batch_results(b, 99, all, 2));
        CHECK(all[0].id == 99 && all[1].id == 100 && all[1].result == NVKV_NOT_FOUND);
        EXPECT_RC(nvkv_batch_results(b, 100, all, 2), NVKV_INVALID_ARGUMENT);
        OK(nvkv_batch_results(b, 101, NULL, 0));
        OK(nvkv_batch_clear(b));
    }
    /* many requests in one call: every key is checked before any is queued */
    {
        const uint8_t *mk[3] = {(const uint8_t *)"m:0", (const uint8_t *)"m:1", (const uint8_t *)"m:2"};
        const uint8_t *mv[3] = {(const uint8_t *)"zero", (const uint8_t *)"one", NULL};
        size_t mkl[3] = {3, 3, 3}, mvl[3] = {4, 3, 0};
        size_t first = 99;
        OK(nvkv_batch_put_many(b, mk, mkl, mv, mvl, 3, &dur, &first));
        CHECK(first == 0);
        OK(nvkv_batch_get_many(b, mk, mkl, 3, &first));
        CHECK(first == 3);
        nvkv_completion mc[6];
        OK(nvkv_batch_results(b, 0, mc, 6));
        CHECK(mc[0].write.applied && mc[1].write.applied && mc[2].write.applied);
        CHECK(mc[3].value_len == 4 && memcmp(mc[3].value, "zero", 4) == 0);
        CHECK(mc[4].value_len == 3 && memcmp(mc[4].value, "one", 3) == 0);
        CHECK(mc[5].result == NVKV_OK && mc[5].value_len == 0);
        size_t bad[3] = {3, 0, 3}; /* the second key is empty: nothing is queued */
        EXPECT_RC(nvkv_batch_get_many(b, mk, bad, 3, NULL), NVKV_EMPTY_KEY);
        EXPECT_RC(nvkv_batch_put_many(b, mk, bad, mv, mvl, 3, NULL, NULL), NVKV_EMPTY_KEY);
        OK(nvkv_batch_len(b, &bl));
        CHECK(bl == 6);
        OK(nvkv_batch_get_many(b, NULL, NULL, 0, &first));
        CHECK(first == 6);
        OK(nvkv_batch_clear(b));
    }
    /* deletes, compare-and-swap and increments in one batch; one key's requests keep their order */
    OK(nvkv_batch_delete(b, K("b:000"), NULL, NULL));
    OK(nvkv_batch_delete(b, K("b:never"), NULL, NULL));
    OK(nvkv_batch_cas(b, K("b:001"), NULL, K("x"), NULL, NULL));
    OK(nvkv_batch_cas(b, K("b:new"), NULL, K("fresh"), NULL, NULL));
    OK(nvkv_batch_incr(b, K("b:ctr"), 7, NULL, NULL));
    OK(nvkv_batch_incr(b, K("b:ctr"), 3, &dur, NULL));
    OK(nvkv_batch_wait(b));
    OK(nvkv_batch_result(b, 0, &c));
    CHECK(c.write.applied);
    OK(nvkv_batch_result(b, 1, &c));
    CHECK(!c.write.applied);
    EXPECT_RC(nvkv_batch_result(b, 2, &c), NVKV_VERSION_MISMATCH);
    CHECK(c.write.version > 0 && !c.write.applied);
    OK(nvkv_batch_result(b, 3, &c));
    CHECK(c.write.applied);
    OK(nvkv_batch_result(b, 4, &c));
    CHECK(c.number == 7);
    OK(nvkv_batch_result(b, 5, &c));
    CHECK(c.number == 10);
    OK(nvkv_batch_result(b, 5, NULL));
    /* a request that fails its checks is not queued */
    EXPECT_RC(nvkv_batch_put(b, NULL, 1, K("v"), NULL, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_batch_get(b, (const uint8_t *)"", 0, NULL), NVKV_EMPTY_KEY);
    OK(nvkv_batch_len(b, &bl));
    CHECK(bl == 6);
    OK(nvkv_batch_free(&b));
    CHECK(b == NULL);
    EXPECT_RC(nvkv_get(db, K("b:000"), buf, sizeof buf, &len, NULL), NVKV_NOT_FOUND);
    OK(nvkv_get(db, K("b:099"), buf, sizeof buf, &len, NULL));
    CHECK(len == 5 && memcmp(buf, "r2-99", 5) == 0);

    /* threads sharing one handle */
    pthread_t th[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){.db = db, .id = i, .errors = 0};
        CHECK(pthread_create(&th[i], NULL, work, &w[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
        CHECK(w[i].errors == 0);
    }

    OK(nvkv_close(&db));
    CHECK(db == NULL);

    /* on a file, everything is there after a reopen */
    if (o.backend == NVKV_BACKEND_FILE || o.backend == NVKV_BACKEND_NVME) {
        o.flags &= ~(uint32_t)NVKV_OPEN_CREATE;
        OK(nvkv_open(&o, &db));
        OK(nvkv_get(db, K("alpha"), buf, sizeof buf, &len, NULL));
        CHECK(len == 4 && memcmp(buf, "two!", 4) == 0);
        OK(nvkv_get(db, K("late"), buf, sizeof buf, &len, NULL));
        OK(nvkv_incr(db, K("actr"), 0, NULL, &n));
        CHECK(n == 40);
        OK(nvkv_db_stats(db, &total));
        /* 605 + 199 a: (one deleted) + chained, actr, late, 99 b: (one deleted) + b:new, b:ctr, 3 m:,
           1200 t: keys */
        CHECK(total.keys == 605 + 199 + 3 + 101 + 3 + 1200);
        OK(nvkv_get(db, K("b:new"), buf, sizeof buf, &len, NULL));
        CHECK(len == 5 && memcmp(buf, "fresh", 5) == 0);
        OK(nvkv_close(&db));
    }

    /* a merge function: the stored value becomes old + new */
    int merges = 0;
    nvkv_options mo;
    OK(nvkv_options_init(&mo));
    mo.size = 16u << 20;
    mo.conflict = NVKV_CONFLICT_MERGE;
    mo.merge = concat;
    mo.merge_ctx = &merges;
    OK(nvkv_open(&mo, &db));
    OK(nvkv_put(db, K("log"), K("a"), NULL, NULL));
    OK(nvkv_put(db, K("log"), K("b"), NULL, NULL));
    OK(nvkv_put(db, K("log"), K("c"), NULL, NULL));
    OK(nvkv_get(db, K("log"), buf, sizeof buf, &len, NULL));
    CHECK(len == 3 && memcmp(buf, "abc", 3) == 0);
    CHECK(__atomic_load_n(&merges, __ATOMIC_SEQ_CST) == 2);
    OK(nvkv_close(&db));

    /* a durable log in persistent memory: here a file (its barrier is msync) */
    char pm[] = "/tmp/nvkv-api-pmem-XXXXXX";
    int fd = mkstemp(pm);
    CHECK(fd >= 0 && ftruncate(fd, 1 << 20) == 0);
    close(fd);
    nvkv_options lo;
    OK(nvkv_options_init(&lo));
    lo.size = 16u << 20;
    lo.shards = 2;
    lo.commit_interval_us = 60u * 1000 * 1000;
    lo.durable_log = NVKV_DURABLE_LOG_PMEM;
    EXPECT_RC(nvkv_open(&lo, &db), NVKV_NULL_POINTER); /* no path */
    lo.durable_log = 9;
    EXPECT_RC(nvkv_open(&lo, &db), NVKV_INVALID_ARGUMENT);
    lo.durable_log = NVKV_DURABLE_LOG_PMEM;
    lo.durable_log_path = "/nonexistent/nvkv-pmem";
    EXPECT_RC(nvkv_open(&lo, &db), NVKV_DURABLE_LOG);
    lo.durable_log_path = pm;
    OK(nvkv_open(&lo, &db));
    nvkv_write_opts logged = {.flags = NVKV_WRITE_DURABLE};
    for (int i = 0; i < 20; i++) {
        char key[16];
        int kl = snprintf(key, sizeof key, "d%02d", i);
        OK(nvkv_put(db, (const uint8_t *)key, (size_t)kl, K("logged"), &logged, NULL));
    }
    nvkv_stats st;
    OK(nvkv_db_stats(db, &st));
    CHECK(st.durable_log_attached && !st.durable_log_failed);
    CHECK(st.durable_log_writes == 20 && st.durable_cycle_writes == 0);
    CHECK(st.durable_log_capacity > 0);
    OK(nvkv_close(&db));
    unlink(pm);

    printf("nvkv-api-test: ok (%d checks)\n", checks);
    return 0;
}
