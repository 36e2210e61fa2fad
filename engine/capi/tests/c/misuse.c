/*
 * Misuse of the C API: each mistake gets its own result code and leaves the library (and the database)
 * working. NULL pointers, bad and closed handles, handles of the wrong kind, buffers too small, keys and
 * values too long (rejected before a byte is read), unknown flags, misaligned outputs.
 *
 *   nvkv-misuse-test memory | file PATH
 */
#include "common.h"

#include <stdint.h>

int main(int argc, char **argv) {
    nvkv_options o;
    nvkv_db *db = open_from_args(argc, argv, &o);
    uint8_t buf[64];
    size_t len = 0;

    /* result texts */
    CHECK(strcmp(nvkv_strerror(NVKV_OK), "success") == 0);
    CHECK(strcmp(nvkv_strerror(-5), "unknown result code") == 0);
    CHECK(strcmp(nvkv_strerror(9999), "unknown result code") == 0);
    nvkv_free(NULL);

    /* open */
    nvkv_db *other = NULL;
    EXPECT_RC(nvkv_open(NULL, &other), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_open(&o, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_options_init(NULL), NVKV_NULL_POINTER);
    nvkv_options bad;
    OK(nvkv_options_init(&bad));
    bad.backend = 7;
    EXPECT_RC(nvkv_open(&bad, &other), NVKV_INVALID_ARGUMENT);
    CHECK(other == NULL);
    OK(nvkv_options_init(&bad));
    bad.size = 0; /* a RAM disk needs a size */
    EXPECT_RC(nvkv_open(&bad, &other), NVKV_INVALID_ARGUMENT);
    bad.size = 1u << 20;
    bad.flags = 0x100;
    EXPECT_RC(nvkv_open(&bad, &other), NVKV_INVALID_ARGUMENT);
    bad.flags = NVKV_OPEN_CREATE;
    bad.conflict = NVKV_CONFLICT_MERGE; /* without a merge function */
    EXPECT_RC(nvkv_open(&bad, &other), NVKV_NULL_POINTER);
    CHECK(strstr(nvkv_last_error(), "merge") != NULL);
    bad.conflict = 9;
    EXPECT_RC(nvkv_open(&bad, &other), NVKV_INVALID_ARGUMENT);
    OK(nvkv_options_init(&bad));
    bad.backend = NVKV_BACKEND_FILE; /* path missing */
    EXPECT_RC(nvkv_open(&bad, &other), NVKV_NULL_POINTER);
    bad.path = "/nonexistent-dir/nvkv.img";
    EXPECT_RC(nvkv_open(&bad, &other), NVKV_IO);
    OK(nvkv_options_init(&bad));
    bad.backend = NVKV_BACKEND_NVME;
    bad.path = "0000:ff:1f.7"; /* no such controller */
    EXPECT_RC(nvkv_open(&bad, &other), NVKV_IO);
    CHECK(strstr(nvkv_last_error(), "0000:ff:1f.7") != NULL);
    CHECK(other == NULL);

    /* NULL pointers */
    EXPECT_RC(nvkv_get(NULL, K("k"), buf, sizeof buf, &len, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_get(db, NULL, 1, buf, sizeof buf, &len, NULL), NVKV_NULL_POINTER);
    CHECK(strstr(nvkv_last_error(), "key") != NULL);
    EXPECT_RC(nvkv_get(db, K("k"), buf, sizeof buf, NULL, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_get(db, K("k"), NULL, 10, &len, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_get_alloc(db, K("k"), NULL, &len, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_put(db, K("k"), NULL, 5, NULL, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_put(NULL, K("k"), K("v"), NULL, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_delete(db, NULL, 3, NULL, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_sync(NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_db_stats(db, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_shard_count(db, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_scan(db, NULL, 0, NULL, 0, 0, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_scan(db, NULL, 4, NULL, 0, 0, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_close(NULL), NVKV_NULL_POINTER);
    nvkv_db *null_db = NULL;
    EXPECT_RC(nvkv_close(&null_db), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_async_new(db, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_async_poll(NULL, 0, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_iter_next(NULL, NULL, NULL, NULL, NULL), NVKV_NULL_POINTER);

    /* keys and values: lengths are checked before any byte is read, so a huge length with a short
       buffer is safe */
    static uint8_t big[NVKV_MAX_KEY_LEN + 1];
    memset(big, 'k', sizeof big);
    EXPECT_RC(nvkv_put(db, big, 0, K("v"), NULL, NULL), NVKV_EMPTY_KEY);
    EXPECT_RC(nvkv_get(db, (const uint8_t *)"", 0, buf, sizeof buf, &len, NULL), NVKV_EMPTY_KEY);
    EXPECT_RC(nvkv_put(db, big, NVKV_MAX_KEY_LEN + 1, K("v"), NULL, NULL), NVKV_KEY_TOO_LONG);
    EXPECT_RC(nvkv_get(db, (const uint8_t *)"k", SIZE_MAX, buf, sizeof buf, &len, NULL), NVKV_KEY_TOO_LONG);
    OK(nvkv_put(db, big, NVKV_MAX_KEY_LEN, K("longest key"), NULL, NULL));
    EXPECT_RC(nvkv_put(db, K("k"), (const uint8_t *)"v", NVKV_MAX_VALUE_LEN + 1, NULL, NULL),
              NVKV_VALUE_TOO_LONG);
    EXPECT_RC(nvkv_put(db, K("k"), (const uint8_t *)"v", SIZE_MAX, NULL, NULL), NVKV_VALUE_TOO_LONG);
    /* within the global limit but larger than this database's write buffer (256 KiB by default) */
    size_t huge_len = 512u << 10;
    uint8_t *huge = calloc(1, huge_len);
    CHECK(huge != NULL);
    EXPECT_RC(nvkv_put(db, K("k"), huge, huge_len, NULL, NULL), NVKV_VALUE_TOO_LONG);
    free(huge);

    /* buffers too small */
    OK(nvkv_put(db, K("k"), K("0123456789"), NULL, NULL));
    memset(buf, 0xee, sizeof buf);
    EXPECT_RC(nvkv_get(db, K("k"), buf, 9, &len, NULL), NVKV_BUFFER_TOO_SMALL);
    CHECK(len == 10 && buf[0] == 0xee);

    /* unknown flags, misaligned outputs */
    nvkv_write_opts wo = {.flags = 0x80, .ts = 0};
    EXPECT_RC(nvkv_put(db, K("k"), K("v"), &wo, NULL), NVKV_INVALID_ARGUMENT);
    _Alignas(8) uint8_t raw[sizeof(nvkv_stats) + 8];
    EXPECT_RC(nvkv_db_stats(db, (nvkv_stats *)(void *)(raw + 1)), NVKV_INVALID_ARGUMENT);
    EXPECT_RC(nvkv_shard_count(db, (size_t *)(void *)(raw + 3)), NVKV_INVALID_ARGUMENT);

    /* handles the library never handed out, and handles of the wrong kind */
    nvkv_db *forged = (nvkv_db *)(uintptr_t)0x1234567;
    EXPECT_RC(nvkv_get(forged, K("k"), buf, sizeof buf, &len, NULL), NVKV_BAD_HANDLE);
    EXPECT_RC(nvkv_sync((nvkv_db *)(uintptr_t)1), NVKV_BAD_HANDLE);
    EXPECT_RC(nvkv_close(&forged), NVKV_BAD_HANDLE);
    nvkv_iter *it = NULL;
    OK(nvkv_scan(db, NULL, 0, NULL, 0, 0, &it));
    EXPECT_RC(nvkv_sync((nvkv_db *)it), NVKV_BAD_HANDLE);
    nvkv_db *it_as_db = (nvkv_db *)it;
    EXPECT_RC(nvkv_close(&it_as_db), NVKV_BAD_HANDLE);
    nvkv_iter *db_as_it = (nvkv_iter *)db;
    EXPECT_RC(nvkv_iter_free(&db_as_it), NVKV_BAD_HANDLE);
    const uint8_t *k;
    size_t kl;
    EXPECT_RC(nvkv_iter_next(it, NULL, &kl, NULL, NULL), NVKV_NULL_POINTER);
    OK(nvkv_iter_next(it, &k, &kl, NULL, NULL)); /* both survived the mix-ups */
    OK(nvkv_sync(db));

    /* freed iterators and closed handles: every copy is detected */
    nvkv_iter *it_copy = it;
    OK(nvkv_iter_free(&it));
    CHECK(it == NULL);
    EXPECT_RC(nvkv_iter_next(it_copy, &k, &kl, NULL, NULL), NVKV_CLOSED);
    EXPECT_RC(nvkv_iter_free(&it_copy), NVKV_CLOSED);

    nvkv_iter *live_it = NULL;
    OK(nvkv_put(db, K("k2"), K("v2"), NULL, NULL));
    OK(nvkv_scan(db, NULL, 0, NULL, 0, 0, &live_it));
    /* one pair read: the iterator holds a page with another pair, which must not be served after close */
    OK(nvkv_iter_next(live_it, &k, &kl, NULL, NULL));
    nvkv_async *ctx = NULL;
    OK(nvkv_async_new(db, &ctx));

    /* batches: NULLs, mix-ups with other handles, misaligned outputs, freed copies */
    nvkv_batch *b = NULL;
    EXPECT_RC(nvkv_batch_new(NULL, &b), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_batch_new(db, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_batch_put(NULL, K("k"), K("v"), NULL, NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_batch_wait(NULL), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_batch_free(NULL), NVKV_NULL_POINTER);
    OK(nvkv_batch_new(db, &b));
    EXPECT_RC(nvkv_batch_put(b, K("k"), K("v"), &wo, NULL), NVKV_INVALID_ARGUMENT); /* unknown flags */
    EXPECT_RC(nvkv_batch_put(b, big, NVKV_MAX_KEY_LEN + 1, K("v"), NULL, NULL), NVKV_KEY_TOO_LONG);
    EXPECT_RC(nvkv_batch_get(b, K("k"), (size_t *)(void *)(raw + 3)), NVKV_INVALID_ARGUMENT);
    size_t bl = 9;
    OK(nvkv_batch_len(b, &bl));
    CHECK(bl == 0); /* nothing was queued by the failed calls */
    EXPECT_RC(nvkv_sync((nvkv_db *)b), NVKV_BAD_HANDLE);
    nvkv_batch *db_as_batch = (nvkv_batch *)db;
    EXPECT_RC(nvkv_batch_free(&db_as_batch), NVKV_BAD_HANDLE);
    EXPECT_RC(nvkv_batch_result(b, 0, NULL), NVKV_INVALID_ARGUMENT); /* empty batch */
    OK(nvkv_batch_put(b, K("k"), K("v"), NULL, NULL));
    EXPECT_RC(nvkv_batch_result(b, 0, (nvkv_completion *)(void *)(raw + 1)), NVKV_INVALID_ARGUMENT);
    OK(nvkv_batch_result(b, 0, NULL));
    EXPECT_RC(nvkv_batch_results(b, 0, NULL, 1), NVKV_NULL_POINTER);
    EXPECT_RC(nvkv_batch_results(b, SIZE_MAX, (nvkv_completion *)(void *)raw, 2), NVKV_INVALID_ARGUMENT);
    EXPECT_RC(nvkv_batch_get_many(b, NULL, NULL, 2, NULL), NVKV_NULL_POINTER);
    const uint8_t *ks2[2] = {(const uint8_t *)"a", NULL};
    size_t kl2[2] = {1, 1};
    EXPECT_RC(nvkv_batch_get_many(b, ks2, kl2, 2, NULL), NVKV_NULL_POINTER); /* the second key */
    EXPECT_RC(nvkv_batch_get_many(b, ks2, (const size_t *)(const void *)(raw + 1), 1, NULL),
              NVKV_INVALID_ARGUMENT); /* misaligned lengths */
    EXPECT_RC(nvkv_batch_put_many(b, ks2, kl2, NULL, kl2, 1, NULL, NULL), NVKV_NULL_POINTER);
    size_t huge2[1] = {NVKV_MAX_VALUE_LEN + 1};
    EXPECT_RC(nvkv_batch_put_many(b, ks2, kl2, ks2, huge2, 1, NULL, NULL), NVKV_VALUE_TOO_LONG);
    OK(nvkv_batch_len(b, &bl));
    CHECK(bl == 1); /* only the put before */
    nvkv_batch *b_copy = b;
    OK(nvkv_batch_free(&b));
    CHECK(b == NULL);
    EXPECT_RC(nvkv_batch_put(b_copy, K("k"), K("v"), NULL, NULL), NVKV_CLOSED);
    EXPECT_RC(nvkv_batch_wait(b_copy), NVKV_CLOSED);
    EXPECT_RC(nvkv_batch_free(&b_copy), NVKV_CLOSED);
    OK(nvkv_sync(db)); /* the database survived the mix-ups */
    nvkv_batch *late = NULL;
    OK(nvkv_batch_new(db, &late));
    OK(nvkv_batch_put(late, K("late"), K("v"), NULL, NULL));

    nvkv_db *copy = db;
    OK(nvkv_close(&db));
    CHECK(db == NULL);
    EXPECT_RC(nvkv_get(copy, K("k"), buf, sizeof buf, &len, NULL), NVKV_CLOSED);
    EXPECT_RC(nvkv_put(copy, K("k"), K("v"), NULL, NULL), NVKV_CLOSED);
    EXPECT_RC(nvkv_close(&copy), NVKV_CLOSED);
    EXPECT_RC(nvkv_close(&db), NVKV_NULL_POINTER);
    /* an iterator and an async context outlive their database; their calls report it closed */
    EXPECT_RC(nvkv_iter_next(live_it, &k, &kl, NULL, NULL), NVKV_CLOSED);
    OK(nvkv_iter_free(&live_it));
    EXPECT_RC(nvkv_async_put(ctx, K("k"), K("v"), NULL, NULL, NULL, NULL), NVKV_CLOSED);
    nvkv_async *ctx_copy = ctx;
    OK(nvkv_async_free(&ctx));
    EXPECT_RC(nvkv_async_free(&ctx_copy), NVKV_CLOSED);
    /* a batch outlives its database too: new requests are refused, the one in flight was answered */
    EXPECT_RC(nvkv_batch_put(late, K("k"), K("v"), NULL, NULL), NVKV_CLOSED);
    OK(nvkv_batch_wait(late));
    OK(nvkv_batch_free(&late));
    EXPECT_RC(nvkv_async_poll(ctx_copy, 0, NULL), NVKV_CLOSED);

    /* the library still works after all that */
    db = open_from_args(argc, argv, &o);
    OK(nvkv_put(db, K("after"), K("fine"), NULL, NULL));
    OK(nvkv_get(db, K("after"), buf, sizeof buf, &len, NULL));
    CHECK(len == 4);
    OK(nvkv_close(&db));

    printf("nvkv-misuse-test: ok (%d checks)\n", checks);
    return 0;
}
