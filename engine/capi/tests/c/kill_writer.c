/* The C side of the kill test (tests/vm_kill_c.rs): opens the database on QEMU's NVMe through libnvkv,
 * checks every key against the model the host passes in /etc/nvkv/model ("key acked tried..." per line,
 * "-" for absent), prints the state it found (durable now: recovery checkpoints it), then writes durable
 * puts and deletes, printing "@@TRY key id" before and "@@ACK key id" after each, until QEMU is killed.
 * Values are those of engine/tests/vm_kill.rs's value_for. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvkv.h"

#define KEYS 400

static size_t value_for(uint64_t key, uint64_t id, uint8_t *out) {
    size_t len = 20 + (size_t)((key * 131 + id * 7) % 900);
    int n = snprintf((char *)out, 64, "k%" PRIu64 "-w%" PRIu64 "-", key, id);
    for (size_t i = (size_t)n; i < len; i++) out[i] = (uint8_t)('a' + id % 26);
    return len;
}

static uint64_t rng = 0;
static uint64_t below(uint64_t n) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % n;
}

static int fail(const char *what, nvkv_result r) {
    printf("@@ERROR %s: %s (%s)\n", what, nvkv_strerror(r), nvkv_last_error());
    return 1;
}

int main(int argc, char **argv) {
    uint64_t round = argc > 1 ? (uint64_t)strtoull(argv[1], NULL, 10) : 0;
    nvkv_options o;
    nvkv_result r = nvkv_options_init(&o);
    if (r != NVKV_OK) return fail("options", r);
    o.backend = NVKV_BACKEND_NVME;
    o.path = "0000:00:10.0";
    o.shards = 2;
    o.buffer_bytes = 64 << 10;
    o.commit_interval_us = 3000;
    nvkv_db *db = NULL;
    r = nvkv_open(&o, &db);
    if (r != NVKV_OK) return fail("open", r);

    static uint8_t buf[2048], want[2048];
    char key[32];
    uint64_t checked = 0, lost = 0;
    FILE *m = fopen("/etc/nvkv/model", "r");
    char line[4096];
    while (m && fgets(line, sizeof line, m)) {
        char *save = NULL;
        char *tok = strtok_r(line, " \n", &save);
        if (!tok) continue;
        uint64_t k = (uint64_t)strtoull(tok, NULL, 10);
        snprintf(key, sizeof key, "key%04" PRIu64, k);
        size_t len = 0;
        r = nvkv_get(db, (const uint8_t *)key, strlen(key), buf, sizeof buf, &len, NULL);
        if (r != NVKV_OK && r != NVKV_NOT_FOUND) return fail("get", r);
        int ok = 0;
        for (tok = strtok_r(NULL, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
            if (strcmp(tok, "-") == 0) {
                ok |= r == NVKV_NOT_FOUND;
            } else if (r == NVKV_OK) {
                size_t wl = value_for(k, (uint64_t)strtoull(tok, NULL, 10), want);
                ok |= wl == len && memcmp(want, buf, len) == 0;
            }
        }
        checked++;
        if (!ok) {
            lost++;
            printf("@@LOST key %" PRIu64 "\n", k);
        }
    }
    if (m) fclose(m);
    for (uint64_t k = 0; k < KEYS; k++) {
        snprintf(key, sizeof key, "key%04" PRIu64, k);
        size_t len = 0;
        r = nvkv_get(db, (const uint8_t *)key, strlen(key), buf, sizeof buf - 1, &len, NULL);
        if (r == NVKV_NOT_FOUND) {
            printf("@@STATE %" PRIu64 " -\n", k);
        } else if (r == NVKV_OK) {
            buf[len] = 0;
            const char *w = strstr((const char *)buf, "-w");
            printf("@@STATE %" PRIu64 " %" PRIu64 "\n", k, (uint64_t)(w ? strtoull(w + 2, NULL, 10) : 0));
        } else {
            return fail("get", r);
        }
    }
    printf("@@CHECKED %" PRIu64 " LOST %" PRIu64 "\n", checked, lost);
    fflush(stdout);
    if (argc > 2 && strcmp(argv[2], "last") == 0) {
        r = nvkv_close(&db);
        return r == NVKV_OK ? 0 : fail("close", r);
    }
    rng = 0x9e3779b97f4a7c15ull ^ ((round + 1) * 0x2545f4914f6cdd1dull);
    nvkv_write_opts durable = {.flags = NVKV_WRITE_DURABLE, .ts = 0};
    for (uint64_t seq = 0;; seq++) {
        uint64_t k = below(KEYS), id = round * 10000000ull + seq;
        snprintf(key, sizeof key, "key%04" PRIu64, k);
        if (below(10) < 7) {
            size_t len = value_for(k, id, want);
            printf("@@TRY %" PRIu64 " %" PRIu64 "\n", k, id);
            fflush(stdout);
            r = nvkv_put(db, (const uint8_t *)key, strlen(key), want, len, &durable, NULL);
            if (r != NVKV_OK) return fail("put", r);
            printf("@@ACK %" PRIu64 " %" PRIu64 "\n", k, id);
        } else {
            printf("@@TRY %" PRIu64 " -\n", k);
            fflush(stdout);
            r = nvkv_delete(db, (const uint8_t *)key, strlen(key), &durable, NULL);
            if (r != NVKV_OK) return fail("delete", r);
            printf("@@ACK %" PRIu64 " -\n", k);
        }
        fflush(stdout);
    }
}
