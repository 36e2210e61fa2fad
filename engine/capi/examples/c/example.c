/*
 * Embedding nvkv from C: open a database, write, read, scan, close (and, on a device that keeps its data,
 * reopen and check that everything is still there).
 *
 *   nvkv-example memory
 *   nvkv-example file PATH          (a 64 MiB file is created/extended)
 *   nvkv-example nvme PCI_ADDRESS   (a controller bound to vfio-pci; as root)
 *
 * Build against an installed libnvkv (see README.md, "Embedding from C"):
 *   cc -std=c11 example.c $(pkg-config --cflags --libs nvkv) -o nvkv-example          (shared)
 *   cc -std=c11 example.c $(pkg-config --cflags --libs nvkv-static) -o nvkv-example   (static)
 */
#include <nvkv.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Any failure ends the program with the library's message. */
static void check(nvkv_result rc, const char *what) {
    if (rc != NVKV_OK) {
        fprintf(stderr, "nvkv-example: %s: %s (%s)\n", what, nvkv_strerror(rc), nvkv_last_error());
        exit(1);
    }
}

static nvkv_db *open_db(int argc, char **argv, int create) {
    nvkv_options o;
    check(nvkv_options_init(&o), "options");
    if (strcmp(argv[1], "memory") == 0) {
        o.backend = NVKV_BACKEND_MEMORY;
        o.size = 64u << 20;
    } else if (strcmp(argv[1], "file") == 0 && argc > 2) {
        o.backend = NVKV_BACKEND_FILE;
        o.path = argv[2];
        o.size = 64u << 20;
    } else if (strcmp(argv[1], "nvme") == 0 && argc > 2) {
        o.backend = NVKV_BACKEND_NVME;
        o.path = argv[2];
    } else {
        fprintf(stderr, "usage: %s memory | file PATH | nvme PCI_ADDRESS\n", argv[0]);
        exit(2);
    }
    o.shards = 2;
    if (!create) {
        o.flags &= ~(uint32_t)NVKV_OPEN_CREATE;
    }
    nvkv_db *db = NULL;
    check(nvkv_open(&o, &db), "open");
    return db;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s memory | file PATH | nvme PCI_ADDRESS\n", argv[0]);
        return 2;
    }
    printf("libnvkv %s (ABI %u)\n", nvkv_version(), nvkv_abi_version());
    nvkv_db *db = open_db(argc, argv, 1);

    /* Write 100 keys; the last one durably (acknowledged once it is on the device). */
    char key[32], val[64];
    for (int i = 0; i < 100; i++) {
        int kl = snprintf(key, sizeof key, "user:%03d", i);
        int vl = snprintf(val, sizeof val, "name-%d", i * 7);
        nvkv_write_opts w = {.flags = i == 99 ? NVKV_WRITE_DURABLE : 0, .ts = 0};
        check(nvkv_put(db, (const uint8_t *)key, (size_t)kl, (const uint8_t *)val, (size_t)vl, &w, NULL),
              "put");
    }
    int64_t visits = 0;
    check(nvkv_incr(db, (const uint8_t *)"visits", 6, 5, NULL, &visits), "incr");

    /* Read into our buffer; a too-small buffer reports the size needed. */
    uint8_t small[4];
    size_t len = 0;
    nvkv_meta meta;
    nvkv_result rc = nvkv_get(db, (const uint8_t *)"user:042", 8, small, sizeof small, &len, &meta);
    if (rc != NVKV_BUFFER_TOO_SMALL) {
        check(rc == NVKV_OK ? NVKV_INVALID_ARGUMENT : rc, "get into a small buffer");
    }
    uint8_t *buf = malloc(len);
    check(buf ? nvkv_get(db, (const uint8_t *)"user:042", 8, buf, len, &len, &meta) : NVKV_NO_MEMORY,
          "get");
    printf("user:042 = %.*s (version %" PRIu64 ")\n", (int)len, (const char *)buf, meta.version);
    free(buf);

    /* Or let the library allocate. */
    uint8_t *v = NULL;
    check(nvkv_get_alloc(db, (const uint8_t *)"user:007", 8, &v, &len, NULL), "get_alloc");
    printf("user:007 = %.*s\n", (int)len, (const char *)v);
    nvkv_free(v);

    check(nvkv_delete(db, (const uint8_t *)"user:011", 8, NULL, NULL), "delete");

    /* Scan user:010 <= key < user:015 in key order. */
    nvkv_iter *it = NULL;
    check(nvkv_scan(db, (const uint8_t *)"user:010", 8, (const uint8_t *)"user:015", 8, 0, &it), "scan");
    const uint8_t *k, *sv;
    size_t kl, svl;
    int n = 0;
    while ((rc = nvkv_iter_next(it, &k, &kl, &sv, &svl)) == NVKV_OK) {
        printf("  %.*s = %.*s\n", (int)kl, (const char *)k, (int)svl, (const char *)sv);
        n++;
    }
    if (rc != NVKV_END || n != 4) {
        fprintf(stderr, "nvkv-example: scan gave %d pairs, ended with %s\n", n, nvkv_strerror(rc));
        return 1;
    }
    check(nvkv_iter_free(&it), "iter_free");

    check(nvkv_sync(db), "sync");
    nvkv_stats st;
    check(nvkv_db_stats(db, &st), "db_stats");
    printf("%" PRIu64 " keys on %u shards, %" PRIu64 " persistence cycles\n", st.keys, st.shard, st.cycles);
    if (st.keys != 100) {
        fprintf(stderr, "nvkv-example: expected 100 keys, stats say %" PRIu64 "\n", st.keys);
        return 1;
    }
    check(nvkv_close(&db), "close");

    if (strcmp(argv[1], "memory") != 0) {
        /* Reopen without formatting: recovery must find every key. */
        db = open_db(argc, argv, 0);
        check(nvkv_scan(db, NULL, 0, NULL, 0, 0, &it), "scan after reopen");
        n = 0;
        while ((rc = nvkv_iter_next(it, &k, &kl, NULL, NULL)) == NVKV_OK) {
            n++;
        }
        check(nvkv_iter_free(&it), "iter_free");
        check(nvkv_get(db, (const uint8_t *)"user:099", 8, NULL, 0, &len, NULL) == NVKV_BUFFER_TOO_SMALL
                  ? NVKV_OK
                  : NVKV_NOT_FOUND,
              "user:099 after reopen");
        if (n != 100) {
            fprintf(stderr, "nvkv-example: %d keys after reopen, expected 100\n", n);
            return 1;
        }
        printf("reopened: %d keys recovered\n", n);
        check(nvkv_close(&db), "close");
    }
    printf("nvkv-example: ok\n");
    return 0;
}
