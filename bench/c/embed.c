/*
 * nvkv-embed-bench: drives libnvkv the way an application embedding it does. Client threads call
 * nvkv_put / nvkv_get one request at a time, or queue --batch requests on an nvkv_batch (its gets with one
 * nvkv_batch_get_many, its puts with one nvkv_batch_put_many), wait once and read the answers with one
 * nvkv_batch_results.
 * Workloads, in this order on one database: fillrandom (every key once, keys split between the threads),
 * readrandom and mix50 (uniform random keys; mix50: half gets, half overwrites) for --seconds each.
 * The keys, values and random sequence are those of nvkv-bench's Rust side (bench/src/embed.rs), so the
 * two measure the same work through the two interfaces.
 *
 *   nvkv-embed-bench --backend memory|file|nvme [--path PATH] [--size BYTES] [--threads N] [--batch B]
 *                    [--keys K] [--value-size V] [--seconds S] [--shards N] [--busy-poll]
 *
 * Prints one JSON object per workload on stdout. Latency is per call (unbatched) or per batch (submit of
 * the first request to the last answer read), in nanoseconds, from a log-linear histogram (3 % buckets).
 * Exits 1 with a message on stderr at the first unexpected result (a read of a missing key, an error).
 */
#define _GNU_SOURCE
#include <nvkv.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KEY_LEN 16

static void die(const char *what, nvkv_result rc) {
    fprintf(stderr, "nvkv-embed-bench: %s: %s (%s)\n", what, nvkv_strerror(rc), nvkv_last_error());
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Log-linear histogram: exact below 32 ns, then 32 buckets per power of two. */
#define SUB 32
#define BUCKETS (60 * SUB)
struct hist {
    uint64_t n[BUCKETS];
    uint64_t count, max;
};

static int bucket(uint64_t v) {
    if (v < SUB) {
        return (int)v;
    }
    int msb = 63 - __builtin_clzll(v);
    return (msb - 4) * SUB + (int)((v >> (msb - 5)) & (SUB - 1));
}

/* The middle of bucket i. */
static double bucket_value(int i) {
    if (i < SUB) {
        return i;
    }
    int msb = i / SUB + 4;
    double lo = (double)(SUB + i % SUB) * (double)(1ull << (msb - 5));
    return lo + (double)(1ull << (msb - 5)) / 2;
}

static void record(struct hist *h, uint64_t v) {
    h->n[bucket(v)]++;
    h->count++;
    if (v > h->max) {
        h->max = v;
    }
}

static double percentile(const struct hist *h, double p) {
    uint64_t want = (uint64_t)((double)h->count * p / 100.0);
    if (want >= h->count && h->count > 0) {
        want = h->count - 1;
    }
    uint64_t seen = 0;
    for (int i = 0; i < BUCKETS; i++) {
        seen += h->n[i];
        if (seen > want) {
            return bucket_value(i);
        }
    }
    return (double)h->max;
}

/* xorshift64*, as bench/src/kv.rs's Rng. */
static uint64_t rng_next(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

/* Key i: the index scrambled and hex-printed (bench/src/kv.rs's key()). */
static void make_key(uint64_t i, uint8_t *out) {
    uint64_t m = i * 0x9e3779b97f4a7c15ull;
    uint64_t h = ((m << 29) | (m >> 35)) ^ i;
    char tmp[KEY_LEN + 1];
    snprintf(tmp, sizeof tmp, "%016" PRIx64, h);
    memcpy(out, tmp, KEY_LEN);
}

enum workload { FILL, READ, MIX };
static const char *const names[] = {"fillrandom", "readrandom", "mix50"};

struct config {
    nvkv_db *db;
    const uint8_t *keys; /* keys * KEY_LEN bytes */
    const uint8_t *values; /* 256 values of value_size bytes: value i is values + (i % 256) * value_size */
    uint64_t keys_n;
    size_t value_size;
    int threads;
    size_t batch;
    double seconds;
};

struct worker {
    const struct config *cfg;
    enum workload w;
    int id;
    pthread_barrier_t *start;
    struct hist h;
    uint64_t ops;
};

static const uint8_t *key_of(const struct config *c, uint64_t i) { return c->keys + i * KEY_LEN; }
static const uint8_t *value_of(const struct config *c, uint64_t i) {
    return c->values + (i % 256) * c->value_size;
}

/* One request of the workload: sets *k and whether it is a read; the value of a write is value_of(k'). */
struct req {
    uint64_t k, v;
    int read;
};

static struct req next_req(const struct config *c, enum workload w, uint64_t *rng, uint64_t fill_next) {
    struct req r = {0, 0, 0};
    switch (w) {
    case FILL:
        r.k = fill_next;
        r.v = fill_next;
        break;
    case READ:
        r.k = rng_next(rng) % c->keys_n;
        r.read = 1;
        break;
    case MIX:
        r.k = rng_next(rng) % c->keys_n;
        r.read = rng_next(rng) % 100 < 50;
        r.v = r.k ^ 1;
        break;
    }
    return r;
}

static void *run(void *arg) {
    struct worker *wk = arg;
    const struct config *c = wk->cfg;
    uint64_t per = c->keys_n / (uint64_t)c->threads;
    uint64_t first = (uint64_t)wk->id * per;
    uint64_t rng = (uint64_t)wk->id + (wk->w == MIX ? 99 : 7);
    uint8_t *buf = malloc(c->value_size + 1);
    if (!buf) {
        fprintf(stderr, "nvkv-embed-bench: out of memory\n");
        exit(1);
    }
    nvkv_batch *b = NULL;
    nvkv_result rc;
    nvkv_completion *done_buf = calloc(c->batch, sizeof *done_buf);
    const uint8_t **rkeys = calloc(c->batch, sizeof *rkeys), **wkeys = calloc(c->batch, sizeof *wkeys);
    const uint8_t **wvals = calloc(c->batch, sizeof *wvals);
    size_t *klens = calloc(c->batch, sizeof *klens), *vlens = calloc(c->batch, sizeof *vlens);
    if (!done_buf || !rkeys || !wkeys || !wvals || !klens || !vlens) {
        fprintf(stderr, "nvkv-embed-bench: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < c->batch; i++) {
        klens[i] = KEY_LEN;
        vlens[i] = c->value_size;
    }
    if (c->batch > 1 && (rc = nvkv_batch_new(c->db, &b)) != NVKV_OK) {
        die("nvkv_batch_new", rc);
    }
    pthread_barrier_wait(wk->start);
    uint64_t t0 = now_ns();
    uint64_t end = t0 + (uint64_t)(c->seconds * 1e9);
    uint64_t done = 0;
    for (;;) {
        if (wk->w == FILL ? done >= per : now_ns() >= end) {
            break;
        }
        uint64_t s = now_ns();
        if (!b) {
            struct req r = next_req(c, wk->w, &rng, first + done);
            if (r.read) {
                size_t len = 0;
                rc = nvkv_get(c->db, key_of(c, r.k), KEY_LEN, buf, c->value_size + 1, &len, NULL);
                if (rc != NVKV_OK) {
                    die("nvkv_get", rc);
                }
                if (len != c->value_size) {
                    fprintf(stderr, "nvkv-embed-bench: key %" PRIu64 ": %zu bytes, expected %zu\n", r.k, len,
                            c->value_size);
                    exit(1);
                }
            } else if ((rc = nvkv_put(c->db, key_of(c, r.k), KEY_LEN, value_of(c, r.v), c->value_size, NULL,
                                      NULL)) != NVKV_OK) {
                die("nvkv_put", rc);
            }
            done++;
        } else {
            size_t n = c->batch;
            if (wk->w == FILL && per - done < n) {
                n = (size_t)(per - done);
            }
            /* The batch's gets and puts go in with one call each, as arrays (their order across keys
               does not matter; one key's requests keep theirs). */
            size_t nr = 0, nw = 0;
            for (size_t i = 0; i < n; i++) {
                struct req r = next_req(c, wk->w, &rng, first + done + i);
                if (r.read) {
                    rkeys[nr++] = key_of(c, r.k);
                } else {
                    wkeys[nw] = key_of(c, r.k);
                    wvals[nw++] = value_of(c, r.v);
                }
            }
            if (nr > 0 && (rc = nvkv_batch_get_many(b, rkeys, klens, nr, NULL)) != NVKV_OK) {
                die("nvkv_batch_get_many", rc);
            }
            if (nw > 0 && (rc = nvkv_batch_put_many(b, wkeys, klens, wvals, vlens, nw, NULL, NULL)) != NVKV_OK) {
                die("nvkv_batch_put_many", rc);
            }
            if ((rc = nvkv_batch_wait(b)) != NVKV_OK) {
                die("nvkv_batch_wait", rc);
            }
            if ((rc = nvkv_batch_results(b, 0, done_buf, n)) != NVKV_OK) {
                die("nvkv_batch_results", rc);
            }
            for (size_t i = 0; i < n; i++) {
                if (done_buf[i].result != NVKV_OK) {
                    die("a batched request", done_buf[i].result);
                }
                if (done_buf[i].value && done_buf[i].value_len != c->value_size) {
                    fprintf(stderr, "nvkv-embed-bench: a batched get: %zu bytes, expected %zu\n",
                            done_buf[i].value_len, c->value_size);
                    exit(1);
                }
            }
            if ((rc = nvkv_batch_clear(b)) != NVKV_OK) {
                die("nvkv_batch_clear", rc);
            }
            done += n;
        }
        record(&wk->h, now_ns() - s);
    }
    wk->ops = done;
    if (b && (rc = nvkv_batch_free(&b)) != NVKV_OK) {
        die("nvkv_batch_free", rc);
    }
    free(buf);
    free(done_buf);
    free(rkeys);
    free(wkeys);
    free(wvals);
    free(klens);
    free(vlens);
    return NULL;
}

static const char *arg_after(int argc, char **argv, const char *name, const char *def) {
    for (int i = 1; i + 1 < argc; i++) {
        if (strcmp(argv[i], name) == 0) {
            return argv[i + 1];
        }
    }
    return def;
}

static int has_flag(int argc, char **argv, const char *name) {
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], name) == 0) {
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *backend = arg_after(argc, argv, "--backend", "memory");
    const char *path = arg_after(argc, argv, "--path", NULL);
    struct config c;
    c.threads = atoi(arg_after(argc, argv, "--threads", "1"));
    c.batch = (size_t)strtoull(arg_after(argc, argv, "--batch", "1"), NULL, 10);
    c.keys_n = strtoull(arg_after(argc, argv, "--keys", "100000"), NULL, 10);
    c.value_size = (size_t)strtoull(arg_after(argc, argv, "--value-size", "100"), NULL, 10);
    c.seconds = atof(arg_after(argc, argv, "--seconds", "2"));
    uint64_t size = strtoull(arg_after(argc, argv, "--size", "268435456"), NULL, 10);
    uint32_t shards = (uint32_t)atoi(arg_after(argc, argv, "--shards", "1"));
    if (c.threads < 1 || c.batch < 1 || c.keys_n < (uint64_t)c.threads || c.seconds <= 0) {
        fprintf(stderr, "nvkv-embed-bench: bad arguments (threads >= 1, batch >= 1, keys >= threads, seconds > 0)\n");
        return 2;
    }

    uint8_t *keys = malloc(c.keys_n * KEY_LEN);
    uint8_t *values = malloc(256 * c.value_size + 1);
    if (!keys || !values) {
        fprintf(stderr, "nvkv-embed-bench: out of memory\n");
        return 1;
    }
    for (uint64_t i = 0; i < c.keys_n; i++) {
        make_key(i, keys + i * KEY_LEN);
    }
    for (int i = 0; i < 256; i++) {
        for (size_t j = 0; j < c.value_size; j++) {
            values[(size_t)i * c.value_size + j] = (uint8_t)((uint8_t)((uint8_t)i + (uint8_t)j) * 31u);
        }
    }
    c.keys = keys;
    c.values = values;

    nvkv_options o;
    nvkv_result rc = nvkv_options_init(&o);
    if (rc != NVKV_OK) {
        die("nvkv_options_init", rc);
    }
    o.shards = shards;
    o.flags = NVKV_OPEN_CREATE | NVKV_OPEN_PIN_THREADS;
    if (has_flag(argc, argv, "--busy-poll")) {
        o.flags |= NVKV_OPEN_BUSY_POLL;
    }
    if (strcmp(backend, "memory") == 0) {
        o.backend = NVKV_BACKEND_MEMORY;
        o.size = size;
    } else if (strcmp(backend, "file") == 0 || strcmp(backend, "nvme") == 0) {
        if (!path) {
            fprintf(stderr, "nvkv-embed-bench: --backend %s needs --path\n", backend);
            return 2;
        }
        o.backend = strcmp(backend, "file") == 0 ? NVKV_BACKEND_FILE : NVKV_BACKEND_NVME;
        o.path = path;
        o.size = o.backend == NVKV_BACKEND_FILE ? size : 0;
    } else {
        fprintf(stderr, "nvkv-embed-bench: unknown backend %s\n", backend);
        return 2;
    }
    if ((rc = nvkv_open(&o, &c.db)) != NVKV_OK) {
        die("nvkv_open", rc);
    }

    struct worker *wk = calloc((size_t)c.threads, sizeof *wk);
    pthread_t *th = calloc((size_t)c.threads, sizeof *th);
    if (!wk || !th) {
        fprintf(stderr, "nvkv-embed-bench: out of memory\n");
        return 1;
    }
    for (int w = FILL; w <= MIX; w++) {
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, (unsigned)c.threads + 1);
        for (int t = 0; t < c.threads; t++) {
            memset(&wk[t], 0, sizeof wk[t]);
            wk[t].cfg = &c;
            wk[t].w = (enum workload)w;
            wk[t].id = t;
            wk[t].start = &start;
            if (pthread_create(&th[t], NULL, run, &wk[t]) != 0) {
                fprintf(stderr, "nvkv-embed-bench: pthread_create failed\n");
                return 1;
            }
        }
        pthread_barrier_wait(&start);
        uint64_t t0 = now_ns();
        struct hist *all = calloc(1, sizeof *all);
        if (!all) {
            fprintf(stderr, "nvkv-embed-bench: out of memory\n");
            return 1;
        }
        uint64_t ops = 0;
        for (int t = 0; t < c.threads; t++) {
            pthread_join(th[t], NULL);
            ops += wk[t].ops;
            for (int i = 0; i < BUCKETS; i++) {
                all->n[i] += wk[t].h.n[i];
            }
            all->count += wk[t].h.count;
            if (wk[t].h.max > all->max) {
                all->max = wk[t].h.max;
            }
        }
        double secs = (double)(now_ns() - t0) / 1e9;
        pthread_barrier_destroy(&start);
        printf("{\"system\":\"nvkv-c\",\"workload\":\"%s\",\"backend\":\"%s\",\"threads\":%d,\"batch\":%zu,"
               "\"keys\":%" PRIu64 ",\"value_size\":%zu,\"ops\":%" PRIu64 ",\"seconds\":%.6f,\"ops_per_s\":%.1f,"
               "\"p50_ns\":%.0f,\"p99_ns\":%.0f,\"p999_ns\":%.0f,\"max_ns\":%" PRIu64 "}\n",
               names[w], backend, c.threads, c.batch, c.keys_n, c.value_size, ops, secs, (double)ops / secs,
               percentile(all, 50), percentile(all, 99), percentile(all, 99.9), all->max);
        fflush(stdout);
        free(all);
    }
    if ((rc = nvkv_close(&c.db)) != NVKV_OK) {
        die("nvkv_close", rc);
    }
    free(wk);
    free(th);
    free(keys);
    free(values);
    return 0;
}
