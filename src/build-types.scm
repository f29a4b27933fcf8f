;;; build-types.scm -- the job file of today's `specification' records.
;;;
;;; src/evaluate.scm loads this file and calls `build-type-jobs' with a
;;; store and the spec's arguments (written by src/cycle/channels.rs):
;;;
;;;   ((build . BUILD)                 ; the spec's `build' field
;;;    (systems "x86_64-linux" ...)
;;;    (checkouts (NAME . DIR) ...)    ; each fetched channel's checkout
;;;    (channels (repository (version 0) (url "...") (branch "...")
;;;                          (commit "...") (name NAME)) ...))
;;;
;;; and returns today's jobs: a list of alists with keyword keys.  What
;;; BUILD means is Cuirass 1.3's (its `(gnu ci)' subsets):
;;;   all, core, guix, hello, images, system-tests, tarball
;;;       => `cuirass-jobs' of the evaluating Guix's (gnu ci);
;;;   (channels NAME ...)  => every package defined in those channels'
;;;       checkouts (by the file of its location), `NAME.SYSTEM';
;;;   (packages NAME ...)  => those packages (specifications such as
;;;       "hello" or "guile@3.0"), looked up in Guix and the checkouts;
;;;   (manifests FILE ...) => the entries of those manifests, FILE
;;;       relative to a checkout, named NAME-VERSION as (gnu ci) names
;;;       them;
;;;   (custom MODULE ...)  => each module's own `cuirass-jobs', called
;;;       with (STORE ARGUMENTS) as Cuirass does, ARGUMENTS holding
;;;       `subset', `systems' and `channels'.
;;; A channel's `.guix-channel' file may put its modules in a
;;; subdirectory (`(directory "src")'): that directory is on the load path.

(use-modules (guix store)
             (guix packages)
             (guix derivations)
             (guix profiles)
             (guix monads)
             (guix gexp)
             (guix grafts)
             (guix discovery)
             (guix diagnostics)
             ((guix ui) #:select (make-user-module))
             (gnu packages)
             (ice-9 match)
             (srfi srfi-1)
             (srfi srfi-26))

(define (channel-module-directory checkout)
  "The directory of CHECKOUT that holds its modules, per `.guix-channel'."
  (let ((file (string-append checkout "/.guix-channel")))
    (or (and (file-exists? file)
             (match (call-with-input-file file read)
               (('channel fields ...)
                (match (assq 'directory fields)
                  (('directory (? string? sub)) (string-append checkout "/" sub))
                  (_ #f)))
               (_ #f)))
        checkout)))

(define (job name drv)
  "A job of today's convention for derivation DRV."
  `((#:job-name . ,name)
    (#:derivation . ,(derivation-file-name drv))
    (#:inputs . ,(map (compose derivation-file-name derivation-input-derivation)
                      (derivation-inputs drv)))
    (#:outputs . ,(derivation->output-paths drv))
    (#:nix-name . ,(derivation-name drv))
    (#:system . ,(derivation-system drv))))

(define (package-job store package system)
  (job (string-append (package-name package) "." system)
       (package-derivation store package system #:graft? #f)))

(define (under? dir file)
  (string-prefix? (string-append dir "/") file))

(define (channel-packages dirs)
  "Every package whose definition is in a file under one of DIRS."
  (fold-packages
   (lambda (package result)
     (let* ((location (package-location package))
            (file (and location
                       (or (search-path %load-path (location-file location))
                           (location-file location)))))
       (if (and file (any (cut under? <> file) dirs))
           (cons package result)
           result)))
   '()
   (all-modules (map (cut cons <> #f) dirs))
   #:select? (const #t)))

(define (manifest-jobs store files dirs systems)
  (define (find-file file)
    (or (any (lambda (dir)
               (let ((path (string-append dir "/" file)))
                 (and (file-exists? path) path)))
             dirs)
        (error "manifest not found in the checkouts:" file)))
  (define (load-manifest file)
    (save-module-excursion
     (lambda ()
       (set-current-module (make-user-module '((guix profiles) (gnu))))
       (primitive-load (find-file file)))))
  (let ((entries (append-map (compose manifest-entries load-manifest) files)))
    (append-map
     (lambda (system)
       (map (lambda (entry)
              (job (string-append (manifest-entry-name entry) "-"
                                  (manifest-entry-version entry))
                   (run-with-store store
                     (lower-object (manifest-entry-item entry) system)
                     #:system system)))
            entries))
     systems)))

(define (gnu-ci-arguments build systems channels)
  ;; (gnu ci) wants a guix channel: the installed Guix stands for it when
  ;; the spec follows none.
  `((subset . ,build)
    (systems ,@systems)
    (channels
     ,@(if (any (match-lambda
                  (('repository fields ...)
                   (equal? (assq 'name fields) '(name guix)))
                  (_ #f))
                channels)
           channels
           (cons '(repository (version 0)
                              (url "https://git.guix.gnu.org/guix.git")
                              (branch "master") (commit "installed")
                              (name guix))
                 channels)))))

(define (build-type-jobs store arguments)
  (define build (assq-ref arguments 'build))
  (define systems (or (assq-ref arguments 'systems) '()))
  (define checkouts (or (assq-ref arguments 'checkouts) '()))
  (define channels (or (assq-ref arguments 'channels) '()))
  (define dirs
    (map (match-lambda ((name . dir) (channel-module-directory dir)))
         checkouts))
  (define (dirs-of names)
    (filter-map (match-lambda
                  ((name . dir)
                   (and (memq name names) (channel-module-directory dir))))
                checkouts))

  (set! %load-path (append dirs %load-path))
  (set! %load-compiled-path (append dirs %load-compiled-path))
  (%graft? #f)
  (match build
    (('channels names ...)
     (let ((packages (channel-packages (dirs-of names))))
       (append-map (lambda (system)
                     (map (cut package-job store <> system) packages))
                   systems)))
    (('packages specs ...)
     (parameterize ((%package-module-path (append dirs (%package-module-path))))
       (let ((packages (map specification->package specs)))
         (append-map (lambda (system)
                       (map (cut package-job store <> system) packages))
                     systems))))
    (('manifests files ...)
     (manifest-jobs store files dirs systems))
    (('custom modules ...)
     (append-map (lambda (module)
                   ((module-ref (resolve-interface module) 'cuirass-jobs)
                    store (gnu-ci-arguments build systems channels)))
                 modules))
    ((? symbol? subset)
     ((module-ref (resolve-interface '(gnu ci)) 'cuirass-jobs)
      store (gnu-ci-arguments subset systems channels)))))
