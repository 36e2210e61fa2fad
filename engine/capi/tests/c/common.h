/* Checks shared by the C test programs: a failed check prints where and why, and exits 1. */
#ifndef NVKV_TEST_COMMON_H
#define NVKV_TEST_COMMON_H

#include <nvkv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks;

#define EXPECT_RC(call, want)                                                                          \
    do {                                                                                               \
        nvkv_result rc_ = (call);                                                                      \
        checks++;                                                                                      \
        if (rc_ != (want)) {                                                                           \
            fprintf(stderr, "%s:%d: %s\n  returned %d (%s: %s), expected %d (%s)\n", __FILE__, __LINE__, \
                    #call, (int)rc_, nvkv_strerror(rc_), nvkv_last_error(), (int)(want),             \
                    nvkv_strerror(want));                                                              \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

#define OK(call) EXPECT_RC(call, NVKV_OK)

#define CHECK(cond)                                                                                    \
    do {                                                                                               \
        checks++;                                                                                      \
        if (!(cond)) {                                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                 \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

#define K(s) (const uint8_t *)(s), strlen(s)

/* Opens the backend named on the command line: "memory" or "file PATH". */
static nvkv_db *open_from_args(int argc, char **argv, nvkv_options *o) {
    OK(nvkv_options_init(o));
    o->shards = 2;
    o->commit_interval_us = 1000;
    if (argc > 2 && strcmp(argv[1], "file") == 0) {
        o->backend = NVKV_BACKEND_FILE;
        o->path = argv[2];
        o->size = 64u << 20;
    } else if (argc > 2 && strcmp(argv[1], "nvme") == 0) {
        o->backend = NVKV_BACKEND_NVME;
        o->path = argv[2];
    } else {
        o->backend = NVKV_BACKEND_MEMORY;
        o->size = 64u << 20;
    }
    nvkv_db *db = NULL;
    OK(nvkv_open(o, &db));
    CHECK(db != NULL);
    return db;
}

#endif
