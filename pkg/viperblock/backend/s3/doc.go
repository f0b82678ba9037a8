// Package s3 is a backend.Store on Amazon S3 or any S3-compatible server that
// supports conditional writes (versitygw, MinIO, Ceph RGW, ...). Importing it
// registers the "s3" URL scheme with backend.Open:
//
//	import _ "github.com/viperblock/viperblock-csi/pkg/viperblock/backend/s3"
//	store, err := backend.Open(ctx, "s3://bucket/prefix?endpoint=http://127.0.0.1:7070&path_style=true")
//
// New opens a store from a Config for programmatic use.
//
// # URL
//
//	s3://BUCKET[/PREFIX][?PARAM=VALUE&...]
//
// PREFIX is optional; when given, every key is stored under "PREFIX/". It is
// validated like a key (segments of [A-Za-z0-9._-]). Query parameters, all
// optional:
//
//	endpoint=URL            S3 endpoint, e.g. http://127.0.0.1:7070 (default: AWS, from region)
//	region=NAME             signing region (default: from the AWS config chain, else us-east-1)
//	path_style=BOOL         path-style addressing (default: true with endpoint=, false without)
//	credentials_file=PATH   read credentials from PATH (format below)
//	profile=NAME            shared config/credentials profile (~/.aws/config, ~/.aws/credentials)
//	max_attempts=N          attempts per request, first one included (default 8)
//	timeout=DURATION        per-attempt timeout, e.g. 30s (default 60s)
//	max_backoff=DURATION    cap on the jittered delay between attempts (default 20s)
//	imds=BOOL               let the default credential chain ask the EC2 instance
//	                        metadata service (default false: never contacted)
//
// Anything else in the URL (an unknown parameter, a repeated one, user
// information such as s3://key:secret@bucket, a port in the bucket name) is an
// error wrapping backend.ErrInvalidURL. Error messages never repeat
// credentials.
//
// # Credentials
//
// In order of precedence:
//
//  1. Config.Credentials (programmatic use only).
//
//  2. credentials_file=PATH: an env-style text file, one KEY=VALUE per line.
//     Blank lines and lines starting with '#' are ignored, an "export "
//     prefix and matching single or double quotes around the value are
//     stripped, and keys other than these three are ignored:
//
//     AWS_ACCESS_KEY_ID=AKIA...
//     AWS_SECRET_ACCESS_KEY=...
//     AWS_SESSION_TOKEN=...        (optional)
//
//     The file is read when the store opens (so a bad file fails at once)
//     and followed from then on; see "Credential rotation".
//
//  3. The aws-sdk-go-v2 default chain: environment (AWS_ACCESS_KEY_ID,
//     AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), the shared config and
//     credentials files (AWS_PROFILE or profile=), web identity
//     (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, as IRSA injects), SSO,
//     ECS/EKS container credentials and EC2 instance metadata.
//
// The store logs only about its credentials file, to Config.Logger (nothing
// by default); credentials never appear in errors, log messages or Stats.
//
// # Credential rotation
//
// Credentials from credentials_file= can change while the store is open, so
// keys can be rotated without reopening it (or restarting the process that
// has it open). Two rules make a running store follow the file:
//
//  1. Check. Credentials read from the file are used for five seconds. Then
//     the file is opened and stat'ed again, and read only if it is not the
//     same version: another inode (the file was replaced by a rename, the
//     atomic way to write it), another size or another modification time
//     (it was rewritten in place). A symbolic link is followed each time,
//     so a file inside a Kubernetes Secret volume, whose "..data" link the
//     kubelet swaps, works too. New credentials count in
//     Stats.CredentialReloads and are logged (Debug) without their values.
//
//  2. Retry on refusal. When S3 refuses an attempt's credentials (error code
//     InvalidAccessKeyId, SignatureDoesNotMatch, ExpiredToken, InvalidToken,
//     TokenRefreshRequired or AccessDenied, or any 403, which is all a HEAD
//     gets), the file is read again whatever its stat says and the attempt
//     is repeated once with what it holds, through the normal retry path
//     (it needs max_attempts of 2 or more and counts in Stats.Retries and
//     Stats.AuthRetries). A second refusal in the same operation is
//     returned. So an operation that races with a rotation, or runs after
//     the old key was revoked but before the next check, still succeeds.
//     A refused request changed nothing on the server, so repeating any
//     operation, PutIf included, is safe.
//
// A file that is missing, unreadable, larger than 64 KiB or does not parse
// (a writer caught halfway through an in-place rewrite) does not replace the
// credentials in use: they are kept, the problem is logged once (Warn) until
// the file reads well again, and it is looked at again at the next check.
// It is an error only when the store opens, when there are no credentials
// to keep. A half-written file that still parses (a secret cut short) yields
// credentials that S3 refuses; the retry on refusal then reads the finished
// file. Writers should still write the file atomically (temporary file,
// fsync, rename), as package credsync does.
//
// Other credential sources are not retried: the environment does not change
// under a running process, and the SDK refreshes expiring credentials (web
// identity, SSO, container and instance credentials) itself.
//
// # Mapping to S3
//
//	Get       GetObject; the Version is the ETag, verbatim (quotes included)
//	GetRange  GetObject with "Range: bytes=off-(off+n-1)"; HeadObject when n == 0;
//	          416 InvalidRange or a short range is backend.ErrRange
//	Put       PutObject with x-amz-checksum-crc32c (the server rejects a
//	          corrupted body; servers without flexible checksums ignore it,
//	          and the engine verifies every block it reads in any case)
//	PutIf     PutObject with If-Match: <version>, or If-None-Match: * for "",
//	          with x-amz-checksum-crc32c and Content-MD5;
//	          412 PreconditionFailed, 409 ConditionalRequestConflict and, for
//	          If-Match, 404 NoSuchKey are backend.ErrPrecondition
//	Delete    DeleteObject; a missing object is not an error
//	List      ListObjectsV2, all pages, keys relative to the prefix, sorted;
//	          directory markers (keys ending in '/') are skipped
//
// NoSuchKey and NotFound (404 without NoSuchBucket) are backend.ErrNotFound.
//
// # Retries and timeouts
//
// Requests use the SDK's standard retryer (exponential backoff with full
// jitter: 50 ms base, 1 s for throttling such as 503 SlowDown, capped at
// max_backoff) with max_attempts attempts and no client-side retry quota, so a
// burst of failures cannot exhaust a token bucket and fail requests that would
// have succeeded. It retries 500/502/503/504, throttling, connection resets
// and refusals, and timeouts; this store adds truncated or garbled responses
// and its own per-attempt timeouts. Each attempt runs under its own context
// with the timeout= deadline (covering, for reads, the whole response body);
// the caller's context bounds the whole operation, and its cancellation is
// never retried. A Get whose body breaks off mid-stream (reset, timeout,
// truncation) is repeated as a whole, up to max_attempts times. Stats counts
// attempts, retries and failures; Config.OnRetry observes each retry.
//
// # Ambiguous conditional writes
//
// A PutIf attempt can be applied by the server while its response is lost (a
// connection reset or timeout after the server committed). The retried
// attempt then fails with 412, because the object is no longer at the version
// the caller named (or, for "", now exists). So when a PutIf fails its
// precondition after more than one attempt, the store reads the object back:
// if it holds exactly the bytes this PutIf wrote, the PutIf succeeded and its
// current ETag is returned. It first tries HeadObject and compares the ETag
// with the MD5 of the data (an S3 ETag is the content MD5 for single-part,
// unencrypted or SSE-S3 puts); when that does not match it falls back to a
// GetObject and a byte comparison, which also covers servers whose ETags are
// not MD5s. Identical content written by another writer is then also taken as
// success, which is harmless: the object holds the state the caller wanted.
// If another writer replaced our write before the retry, the PutIf reports
// backend.ErrPrecondition although it was briefly applied; a caller that
// loses a compare-and-swap must re-read anyway, so this is safe. If the
// object cannot be read back (the read fails too, or the caller's context
// ended), the PutIf fails with an error that is not ErrPrecondition: its
// outcome is unknown, as after a lost answer on the last attempt, and the
// caller must read the object to learn it (the engine does, see package
// viperblock). A 412 on the first attempt is always ErrPrecondition.
package s3
