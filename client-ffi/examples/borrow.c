/* borrow.c: borrowing for offline use through the licensing client library (liblicensing).
 *
 *   borrow borrow SERVERS PRODUCER_KEY_PEM FEATURE SECONDS FILE
 *       borrows one seat of FEATURE for SECONDS and keeps the borrowed lease in FILE
 *       (mode 0600: it holds the lease token)
 *   borrow verify PRODUCER_KEY_PEM FILE
 *       verifies the kept borrow offline, with the producer's key alone (no server)
 *   borrow return SERVERS PRODUCER_KEY_PEM FILE
 *       gives the kept borrow back before its end
 *
 *   cc -o borrow borrow.c -I client-ffi/include -L target/debug -llicensing \
 *      -Wl,-rpath,"$PWD/target/debug"
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "licensing.h"

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = calloc(1, 65536);
    size_t n = text ? fread(text, 1, 65535, f) : 0;
    fclose(f);
    if (text && n == 0) { free(text); return NULL; }
    return text;
}

static int write_private(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len);
    return close(fd) == 0 && n == (ssize_t)len ? 0 : -1;
}

static int fail(const char *what, LicensingStatus status) {
    printf("%s: %s (%s)\n", what, licensing_status_name(status), licensing_last_error_message());
    return 1;
}

/* The kept borrow in FILE, or NULL (the reason printed). */
static LicensingBorrow *kept(const char *file) {
    char *json = read_file(file);
    if (!json) { printf("cannot read %s\n", file); return NULL; }
    LicensingBorrow *borrow = NULL;
    LicensingStatus rc = licensing_borrow_from_json(json, &borrow);
    free(json);
    if (rc != LICENSING_STATUS_OK) { fail("read", rc); return NULL; }
    return borrow;
}

static LicensingClient *client_of(const char *servers, const char *key_file) {
    char *producer = read_file(key_file);
    if (!producer) { printf("cannot read %s\n", key_file); return NULL; }
    LicensingClient *client = NULL;
    LicensingStatus rc = licensing_client_new(servers, producer, NULL, NULL, &client);
    free(producer);
    if (rc != LICENSING_STATUS_OK) { fail("client", rc); return NULL; }
    return client;
}

int main(int argc, char **argv) {
    if (argc == 7 && strcmp(argv[1], "borrow") == 0) {
        LicensingClient *client = client_of(argv[2], argv[3]);
        if (!client) return 1;
        LicensingBorrow *borrow = NULL;
        LicensingStatus rc = licensing_borrow(client, argv[4], NULL, 1,
                                              strtoull(argv[5], NULL, 10), &borrow);
        licensing_client_free(client);
        if (rc != LICENSING_STATUS_OK) return fail("borrow", rc);
        int64_t until = 0;
        licensing_borrow_expires_at(borrow, &until);
        int written = write_private(argv[6], licensing_borrow_json(borrow));
        licensing_borrow_free(borrow);
        if (written != 0) { printf("cannot write %s\n", argv[6]); return 1; }
        printf("borrowed %s until %" PRId64 "\n", argv[4], until);
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "verify") == 0) {
        char *producer = read_file(argv[2]);
        LicensingBorrow *borrow = kept(argv[3]);
        if (!producer || !borrow) { free(producer); licensing_borrow_free(borrow); return 1; }
        LicensingStatus rc = licensing_borrow_verify(borrow, producer, 0);
        int64_t until = 0;
        licensing_borrow_expires_at(borrow, &until);
        free(producer);
        licensing_borrow_free(borrow);
        if (rc != LICENSING_STATUS_OK) return fail("verify", rc);
        printf("verified offline until %" PRId64 "\n", until);
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "return") == 0) {
        LicensingClient *client = client_of(argv[2], argv[3]);
        LicensingBorrow *borrow = kept(argv[4]);
        LicensingStatus rc = client && borrow ? licensing_borrow_return(client, borrow)
                                              : LICENSING_STATUS_INVALID;
        licensing_borrow_free(borrow);
        licensing_client_free(client);
        if (rc != LICENSING_STATUS_OK) return fail("return", rc);
        printf("returned\n");
        return 0;
    }
    fprintf(stderr,
            "usage: %s borrow SERVERS PRODUCER_KEY_PEM FEATURE SECONDS FILE\n"
            "       %s verify PRODUCER_KEY_PEM FILE\n"
            "       %s return SERVERS PRODUCER_KEY_PEM FILE\n",
            argv[0], argv[0], argv[0]);
    return 2;
}
