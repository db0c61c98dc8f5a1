/* checkout.c: a C program that links the licensing client library (liblicensing).
 *
 * Two threads check out one seat each of two features through one shared client; a
 * second client then finds the first feature's seats used up (NO_LICENSE_AVAILABLE);
 * the program waits for the leases to be renewed in the background, holds them until a
 * line arrives on standard input (or at once with --no-wait), and returns them.
 *
 *   cc -o checkout checkout.c -I client-ffi/include -L target/debug -llicensing \
 *      -Wl,-rpath,"$PWD/target/debug"
 *   ./checkout http://127.0.0.1:7070 producer.pub.pem cad cam --no-wait
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "licensing.h"

struct job {
    const LicensingClient *client;
    const char *feature;
    LicensingLease *lease;
    LicensingStatus status;
    char message[512];
};

/* Runs on its own thread: the client is shared, the error message is per thread. */
static void *checkout_one(void *arg) {
    struct job *job = arg;
    job->status = licensing_checkout(job->client, job->feature, NULL, 1, &job->lease);
    if (job->status != LICENSING_STATUS_OK)
        snprintf(job->message, sizeof job->message, "%s", licensing_last_error_message());
    return NULL;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = calloc(1, 65536);
    size_t n = text ? fread(text, 1, 65535, f) : 0;
    fclose(f);
    if (text && n == 0) { free(text); return NULL; }
    return text;
}

static int fail(const char *what, LicensingStatus status) {
    fprintf(stderr, "%s: %s: %s\n", what, licensing_status_name(status),
            licensing_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s SERVERS PRODUCER_KEY_PEM FEATURE_A FEATURE_B [--no-wait]\n",
                argv[0]);
        return 2;
    }
    const char *servers = argv[1];
    int wait_for_stdin = !(argc > 5 && strcmp(argv[5], "--no-wait") == 0);
    char *producer_key = read_file(argv[2]);
    if (!producer_key) {
        fprintf(stderr, "cannot read the producer's key %s\n", argv[2]);
        return 2;
    }

    LicensingClient *client = NULL;
    LicensingStatus rc = licensing_client_new(servers, producer_key, NULL, NULL, &client);
    if (rc != LICENSING_STATUS_OK) return fail("client", rc);

    /* Two threads, one client. */
    struct job jobs[2] = {
        {.client = client, .feature = argv[3]},
        {.client = client, .feature = argv[4]},
    };
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) pthread_create(&threads[i], NULL, checkout_one, &jobs[i]);
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < 2; i++) {
        if (jobs[i].status != LICENSING_STATUS_OK) {
            fprintf(stderr, "checkout of %s: %s: %s\n", jobs[i].feature,
                    licensing_status_name(jobs[i].status), jobs[i].message);
            return 1;
        }
        int64_t until = 0;
        licensing_lease_expires_at(jobs[i].lease, &until);
        printf("checked out %s: lease %s until %lld\n", jobs[i].feature,
               licensing_lease_id(jobs[i].lease), (long long)until);
    }

    /* Another client: the first feature's seats are all in use. */
    LicensingClient *other = NULL;
    rc = licensing_client_new(servers, producer_key, NULL, "checkout-c-other", &other);
    if (rc != LICENSING_STATUS_OK) return fail("second client", rc);
    LicensingLease *none = NULL;
    rc = licensing_checkout(other, argv[3], NULL, 1, &none);
    printf("second client, %s: %s (%s)\n", argv[3], licensing_status_name(rc),
           licensing_last_error_message());
    if (rc != LICENSING_STATUS_NO_LICENSE_AVAILABLE || none != NULL) return 1;
    licensing_client_free(other);

    /* The leases are renewed in the background: wait until the expiry moves on. */
    int64_t first = 0, now = 0;
    licensing_lease_expires_at(jobs[0].lease, &first);
    for (time_t deadline = time(NULL) + 60; time(NULL) < deadline; usleep(100 * 1000)) {
        licensing_lease_expires_at(jobs[0].lease, &now);
        if (now > first) break;
    }
    if (now <= first) {
        rc = licensing_lease_status(jobs[0].lease);
        return fail("no renewal", rc == LICENSING_STATUS_OK ? LICENSING_STATUS_INVALID : rc);
    }
    printf("renewed %s: until %lld (%s)\n", licensing_lease_id(jobs[0].lease), (long long)now,
           licensing_status_name(licensing_lease_status(jobs[0].lease)));

    if (wait_for_stdin) {
        printf("holding\n");
        fflush(stdout);
        char line[16];
        if (!fgets(line, sizeof line, stdin)) { /* end of input: return them too */ }
    }

    for (int i = 0; i < 2; i++) {
        rc = licensing_lease_return(jobs[i].lease);
        if (rc != LICENSING_STATUS_OK) return fail("return", rc);
        printf("returned %s\n", licensing_lease_id(jobs[i].lease));
        licensing_lease_free(jobs[i].lease);
    }
    licensing_client_free(client);
    free(producer_key);
    return 0;
}
