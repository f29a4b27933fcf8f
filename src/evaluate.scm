;;; evaluate.scm -- the job evaluator that cuirass runs for each new commit.
;;;
;;; Invocation (Guix 1.2.0 with Guile 2.2, or Guix 1.5.0 with Guile 3.0):
;;;
;;;   guix repl -- evaluate.scm SPEC
;;;
;;; where SPEC is one written S-expression (an alist with symbol keys):
;;;
;;;   ((checkout . "/cache/hello")
;;;    (load-path "/cache/hello/." "/extra/dir")
;;;    (file . "/cache/hello/build-aux/ci.scm")
;;;    (proc . hydra-jobs)
;;;    (arguments (subset . "hello") (systems "x86_64-linux")))
;;;
;;; Protocol on the ORIGINAL standard output, one S-expression per line,
;;; each line flushed as soon as it is known (so the daemon can stream it):
;;;
;;;   (job (name . "hello") (derivation . "/gnu/store/…-hello.drv")
;;;        [(system . "x86_64-linux")] [(description . "…")]
;;;        [(max-silent-time . 3600)] [(timeout . 72000)] [(priority . 5)])
;;;   (job-error (name . "x") (message . "…"))
;;;   (done N)                    ; N = number of `job' lines; last line
;;;
;;; (The `job' line is a single line; it is wrapped here for readability.)
;;; Optional keys appear only when known, always in that order; the limits
;;; (seconds) and the priority are exact non-negative integers.  Strings are
;;; printed with `write': \" \\ \n \t escapes, other control characters as
;;; \xNN;, everything else as UTF-8.
;;;
;;; PROC may follow any of three job conventions:
;;;   - Cuirass 2018: a list of thunks, each returning an alist with keyword
;;;     keys (#:job-name, #:derivation, ...);
;;;   - Guix 1.2.0's (gnu ci) `hydra-jobs': a list of (NAME . THUNK), each
;;;     thunk returning an alist with symbol keys;
;;;   - today's (gnu ci) `cuirass-jobs' (Guix >= 1.3): a list of alists with
;;;     keyword keys, #:job-name, #:derivation, #:system, #:nix-name,
;;;     #:outputs, #:inputs, #:timeout, #:max-silent-time, [#:priority].
;;; Cuirass reads the system, name, outputs and inputs from the .drv file
;;; itself, so only the job's name, derivation, limits and priority matter.
;;;
;;; Exit status: 0 after `(done N)'.  1 on a fatal error (job file missing or
;;; unreadable, PROC undefined or raising, an attempt to build), reported on
;;; standard error as ONE line `evaluate: error: CONTEXT: MESSAGE' of at most
;;; 1,000 characters (printed data in it cut to 200), possibly followed by a
;;; backtrace; then there is no `(done N)' line.
;;;
;;; Anything else -- Guix's progress messages, whatever the job file prints
;;; on (current-output-port), even child processes writing to file
;;; descriptor 1 -- ends up on standard error.

(use-modules (guix store)
             (guix derivations)
             (guix grafts)
             (ice-9 match)
             (srfi srfi-1))


;;;
;;; Output plumbing.
;;;

;; Keep a private handle on the real stdout, then point file descriptor 1 at
;; stderr: the protocol stream can then only be written deliberately, whatever
;; the job file, Guix, or their child processes do.
(define %protocol-port
  (let ((port (fdopen (dup->fdes 1) "w")))
    (set-port-encoding! port "UTF-8")
    port))
(force-output (current-output-port))
(dup2 2 1)

(define (emit sexp)
  (write sexp %protocol-port)
  (newline %protocol-port)
  (force-output %protocol-port))

(define (call-with-output-to-stderr thunk)
  ;; fd 1 already goes to stderr, but the Scheme stdout port has its own
  ;; buffer; bypass it so that messages keep their order on stderr.
  (with-output-to-port (current-error-port) thunk))

(define (note fmt . args)
  (apply format (current-error-port) (string-append "evaluate: " fmt "~%")
         args))


;;;
;;; Errors.
;;;

(define (fail fmt . args)
  "Raise an error of the evaluator itself: the message says it all, so no
backtrace is shown for it."
  (throw 'evaluator-error (apply format #f fmt args)))

;; `message-condition?' & co. come from (srfi srfi-35), which Guix uses for
;; its own errors (&message, &store-protocol-error, ...).
(define message-condition?
  (module-ref (resolve-interface '(srfi srfi-35)) 'message-condition?))
(define condition-message
  (module-ref (resolve-interface '(srfi srfi-35)) 'condition-message))

(define %max-datum-length 200)
(define %max-message-length 1000)

(define (truncate-string str len)
  (if (> (string-length str) len)
      (string-append (string-take str (max 0 (- len 1))) "…")
      str))

(define (datum->short-string obj)
  "Print OBJ as `write' does, cut to %max-datum-length characters: a whole
job or package printed into an error message would drown the message."
  (truncate-string (format #f "~s" obj) %max-datum-length))

(define (one-line str)
  "STR on one line of at most %max-message-length characters."
  (truncate-string (string-map (lambda (c) (if (char=? c #\newline) #\space c))
                               str)
                   %max-message-length))

(define (error->string key args)
  "Return a one-line human-readable description of the exception KEY/ARGS."
  (one-line (error->text key args)))

(define (error->text key args)
  (match (cons key args)
    (('evaluator-error message)
     message)
    ;; SRFI-34 `raise' (used all over Guix), usually of an SRFI-35 condition.
    (('srfi-34 obj)
     (cond ((store-protocol-error? obj)
            (string-append "store protocol error: "
                           (store-protocol-error-message obj)))
           ((message-condition? obj)
            (condition-message obj))
           (else (datum->short-string obj))))
    (_
     (string-trim-right
      (call-with-output-string
        (lambda (port)
          (print-exception port #f key args)))))))

(define (call-with-fatal-errors context thunk)
  "Call THUNK.  If it throws, report the error with CONTEXT (and a backtrace
when the error comes from the job file's code) on stderr and exit with
status 1."
  (let ((backtrace #f))
    (catch #t
      thunk
      (lambda (key . args)
        ;; `exit' throws 'quit in Guile 2.2: let it through untouched.
        (when (eq? key 'quit)
          (apply throw key args))
        (format (current-error-port) "evaluate: error: ~a~%"
                (one-line (string-append context ": "
                                         (error->string key args))))
        (when backtrace
          (display backtrace (current-error-port)))
        (exit 1))
      ;; Pre-unwind handler: the only place where the stack is still there.
      ;; Read errors and our own errors carry all the context already.
      (lambda (key . args)
        (unless (memq key '(quit evaluator-error read-error))
          (let ((stack (make-stack #t 3)))   ;skip this handler's frames
            (set! backtrace
              (call-with-output-string
                (lambda (port)
                  (display "Backtrace:\n" port)
                  (display-backtrace stack port))))))))))

(define (call-with-job-errors name thunk)
  "Call THUNK; if it throws (other than `exit'), return the error message as a
string wrapped in a list, so that one broken job does not spoil the others."
  (catch #t
    thunk
    (lambda (key . args)
      (when (eq? key 'quit)
        (apply throw key args))
      (let ((message (error->string key args)))
        (note "job ~a failed: ~a" name message)
        (list message)))))


;;;
;;; Forbid building.
;;;

(define (refuse-to-build store things . _)
  (format (current-error-port)
          "~%evaluate: error: trying to build things during evaluation~%\
evaluate: 'build-things' arguments: ~a~%\
evaluate: evaluation must only compute derivations; this is most likely an \
issue with the job file or the packages it evaluates.~%"
          (datum->short-string things))
  (force-output (current-error-port))
  (exit 1))

(define (prevent-builds! store)
  ;; No substitutes either: a substitute download is a build in disguise, and
  ;; there is no network here anyway.
  (set-build-options store #:use-substitutes? #f #:substitute-urls '())
  ;; Grafts need the ungrafted outputs built before the grafted derivation
  ;; can be computed: turn them off for the whole run.
  (%graft? #f)
  ;; The sledgehammer.  Every caller (build-derivations in (guix derivations),
  ;; map/accumulate-builds in (guix store) itself, ...) refers to
  ;; `build-things' through its module variable (Guile 2.2 does not inline
  ;; across top-level definitions), so replacing the variable's value catches
  ;; them all.  What it misses -- procedures that captured the *value* of
  ;; build-things, like the monadic `build' made by `store-lift' -- still go
  ;; through the original build-things, which first invokes the current build
  ;; handler; `call-with-build-guard' installs one.
  (module-set! (resolve-module '(guix store)) 'build-things refuse-to-build))

(define (call-with-build-guard thunk)
  (with-build-handler (lambda (continue store things mode)
                        (refuse-to-build store things))
    (thunk)))


;;;
;;; Jobs.
;;;

(define (ref alist key)
  "Look KEY (a symbol) up in ALIST under both job conventions: the symbol
itself (Guix's (gnu ci)) or the corresponding keyword (Cuirass 2018)."
  (match (or (assq key alist) (assq (symbol->keyword key) alist))
    ((_ . value) value)
    (#f #f)))

(define (name->string name)
  (cond ((string? name) name)
        ((symbol? name) (symbol->string name))
        (else (format #f "~a" name))))

(define (job-line name result)
  "Return the `job' S-expression for the thunk RESULT of job NAME (#f when
the name is to be taken from RESULT), or raise an error if RESULT lacks the
essentials."
  (define alist
    (match result
      ((? derivation? drv)              ;tolerate a bare derivation
       `((derivation . ,drv)
         (job-name . ,(derivation-name drv))
         (system . ,(derivation-system drv))))
      (((_ . _) ...) result)
      (_ (fail "job thunk returned neither an alist nor a derivation: ~a"
               (datum->short-string result)))))

  (define job-name
    (or name
        (and=> (or (ref alist 'job-name) (ref alist 'nix-name)) name->string)
        (fail "job has no #:job-name: ~a" (datum->short-string alist))))

  (define derivation
    (match (ref alist 'derivation)
      ((? derivation? drv) (derivation-file-name drv))
      ((? string? file) file)
      (x (fail "job ~a has no derivation file name: ~a" job-name
               (datum->short-string x)))))

  (define (optional key ok? transform)
    (match (ref alist key)
      ((? ok? value) `((,key . ,(transform value))))
      (_ '())))

  `(job (name . ,job-name)
        (derivation . ,derivation)
        ,@(optional 'system string? identity)
        ,@(optional 'description string?
                    (lambda (s)
                      (if (> (string-length s) 200) (string-take s 200) s)))
        ,@(optional 'max-silent-time natural? identity)
        ,@(optional 'timeout natural? identity)
        ,@(optional 'priority natural? identity)))

(define (natural? x)
  (and (integer? x) (exact? x) (>= x 0)))

(define (job-alist? x)
  "Whether X is a job of today's convention: an alist whose keys are all
keywords or symbols (a (NAME . THUNK) pair is no list)."
  (and (pair? x) (list? x)
       (every (lambda (entry)
                (and (pair? entry)
                     (or (keyword? (car entry)) (symbol? (car entry)))))
              x)))

(define (jobs->named-thunks jobs)
  "Normalize the value of PROC to a list of (NAME . THUNK), NAME being #f
when only the thunk's result knows it (Cuirass 2018 convention and today's
alists, which become thunks returning themselves)."
  (unless (list? jobs)
    (fail "job procedure did not return a list: ~a" (datum->short-string jobs)))
  (map (match-lambda
         ((? procedure? thunk) (cons #f thunk))            ;Cuirass 2018
         ((? job-alist? alist) (cons #f (lambda () alist))) ;(gnu ci) today
         (((? (lambda (n) (or (symbol? n) (string? n))) name)
           . (? procedure? thunk))
          (cons (name->string name) thunk))                ;(gnu ci)
         (x (fail "job is neither a thunk, a (name . thunk) pair nor an \
alist: ~a" (datum->short-string x))))
       jobs))

(define (evaluate-jobs named-thunks)
  "Call each thunk, streaming one line per job; return the number of `job'
lines."
  (let loop ((lst named-thunks) (index 1) (count 0))
    (match lst
      (()
       count)
      (((name . thunk) . rest)
       (let* ((label (or name (format #f "<unnamed job ~a>" index)))
              (line  (call-with-job-errors
                      label
                      (lambda ()
                        (call-with-output-to-stderr
                         (lambda ()
                           (job-line name (thunk))))))))
         (match line
           ((message)
            (emit `(job-error (name . ,label) (message . ,message)))
            (loop rest (+ index 1) count))
           (_
            (emit line)
            (loop rest (+ index 1) (+ count 1)))))))))


;;;
;;; Loading the job file.
;;;

(define (load-job-procedure file proc-name)
  "Load FILE in a fresh user module and return its procedure PROC-NAME.  A job
file that is itself a module (define-module) is looked up too."
  (unless (file-exists? file)
    (fail "job file not found: ~a" file))
  (let* ((fresh  (make-fresh-user-module))
         (ending (save-module-excursion
                  (lambda ()
                    (set-current-module fresh)
                    (call-with-output-to-stderr
                     (lambda () (primitive-load file)))
                    ;; A define-module in FILE changed the current module.
                    (current-module))))
         (proc   (or (module-ref fresh proc-name #f)
                     (module-ref ending proc-name #f))))
    (unless (procedure? proc)
      (fail "job file ~a does not define procedure ~a" file proc-name))
    proc))


;;;
;;; Entry point.
;;;

(define (main spec)
  (define (spec-ref key)
    (assq-ref spec key))

  (let* ((file      (spec-ref 'file))
         (proc-name (match (spec-ref 'proc)
                      ((? string? s) (string->symbol s))
                      (s s)))
         (load-path (or (spec-ref 'load-path) '()))
         (arguments (or (spec-ref 'arguments) '()))
         (checkout  (spec-ref 'checkout))
         (start     (get-internal-real-time)))
    (unless (and (string? file) (symbol? proc-name))
      (call-with-fatal-errors "invalid specification argument"
        (lambda ()
          (fail "specification lacks 'file' or 'proc': ~a"
                (datum->short-string spec)))))

    ;; Like `guix repl -L': the job file's own modules, then the user's.
    (set! %load-path (append load-path %load-path))
    (set! %load-compiled-path (append load-path %load-compiled-path))
    ;; Let job files use file names relative to their checkout.
    (when (and (string? checkout) (file-exists? checkout))
      (chdir checkout))

    (let ((store (call-with-fatal-errors "cannot connect to the store"
                   (lambda () (open-connection)))))
      (prevent-builds! store)
      (call-with-build-guard
       (lambda ()
         (let* ((proc   (call-with-fatal-errors
                         (format #f "loading job file ~a" file)
                         (lambda () (load-job-procedure file proc-name))))
                (thunks (call-with-fatal-errors
                         (format #f "calling '~a' of ~a" proc-name file)
                         (lambda ()
                           (jobs->named-thunks
                            (call-with-output-to-stderr
                             (lambda () (proc store arguments)))))))
                (count  (evaluate-jobs thunks)))
           (emit `(done ,count))
           (note "~a jobs (~a errors) evaluated in ~,1f s"
                 count (- (length thunks) count)
                 (exact->inexact
                  (/ (- (get-internal-real-time) start)
                     internal-time-units-per-second))))))
      (close-connection store))))

;; `guix repl -- FILE ARGS' sets (command-line) to (FILE ARGS ...).
(match (command-line)
  ((_ spec-string)
   (main (call-with-fatal-errors "reading the specification argument"
           (lambda ()
             (match (call-with-input-string spec-string read)
               ((and spec (((? symbol?) . _) ...)) spec)
               (x (fail "not an alist: ~a" (datum->short-string x))))))))
  ((program . _)
   (format (current-error-port)
           "Usage: guix repl -- ~a '((file . \"/abs/job.scm\") (proc . NAME) \
(load-path DIR ...) (arguments ...))'~%" program)
   (exit 1)))
