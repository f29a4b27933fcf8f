;;; Evaluates a Cuirass specification file and writes its value to stdout.
;;;
;;; Usage: guix repl -- read-spec.scm /absolute/path/to/spec.scm
;;;
;;; The Rust side reads plain data files itself and only runs this script for
;;; files that contain real code (let, define, string-append, getenv,
;;; current-filename, use-modules...).  The file is evaluated the way the
;;; original Cuirass did: primitive-load in a fresh user module, whose value is
;;; that of the file's last expression.  primitive-load keeps source positions,
;;; so (current-filename) inside the file names the file itself.

;;; What Cuirass's own module and (guix channels) give a spec file of today.
;;; Cuirass is not installed, so the records are made here, as the data
;;; `(<NAME> (FIELD . VALUE) ...)` that the Rust side reads from plain files
;;; too (src/sexp/eval.rs); it checks the fields and their values.
(define %record-forms
  '((define-syntax define-record-form
      (syntax-rules ()
        ((_ name tag)
         (define-syntax name
           (syntax-rules ()
             ((_ (field value) (... ...))
              (list 'tag (cons 'field value) (... ...))))))))
    (define-record-form specification <specification>)
    (define-record-form channel <channel>)
    (define-record-form build-output <build-output>)
    (define-record-form email <email>)
    (define-record-form mastodon <mastodon>)
    (define (make-channel-introduction commit signer)
      (list '<channel-introduction> (cons 'commit commit) (cons 'signer signer)))
    (define (openpgp-fingerprint string) string)
    (define %default-guix-channel
      (channel (name 'guix)
               (url "https://git.guix.gnu.org/guix.git")
               (branch "master")
               (introduction
                (make-channel-introduction
                 "9edb3f66fd807b096b48283debdcddccfea34bad"
                 (openpgp-fingerprint
                  "BBB0 2DDF 2CEA F6A8 0D1D  E643 A2A0 6DF2 A33A 54FA")))))
    (define %default-channels (list %default-guix-channel))))

(define (evaluate file)
  (let ((module (make-fresh-user-module)))
    (for-each (lambda (form) (eval form module)) %record-forms)
    (save-module-excursion
     (lambda ()
       (set-current-module module)
       (primitive-load file)))))

;;; A file may import (guix channels) itself and so make Guix's own channel
;;; records: they are written as the data the shim above makes.
(define (field record name)
  ;; By the record's own type: Guix's accessors may be syntax.
  ((record-accessor (record-type-descriptor record) name) record))

(define (guix-channel->data channel)
  (let ((intro (field channel 'introduction))
        (commit (field channel 'commit))
        (fingerprint (module-ref (resolve-interface '(guix openpgp))
                                 'openpgp-format-fingerprint)))
    `(<channel> (name . ,(field channel 'name))
                (url . ,(field channel 'url))
                (branch . ,(field channel 'branch))
                ,@(if commit `((commit . ,commit)) '())
                ,@(if intro
                      `((introduction
                         <channel-introduction>
                         (commit . ,(field intro 'first-signed-commit))
                         (signer . ,(fingerprint
                                     (field intro 'first-commit-signer)))))
                      '()))))

(define (plain value)
  "VALUE with Guix's channel records (structs) turned into data."
  (cond ((pair? value) (cons (plain (car value)) (plain (cdr value))))
        ;; `channel?' is syntax in recent Guix: ask the record's type.
        ((and (record? value)
              (memq (record-type-name (record-type-descriptor value))
                    '(channel <channel>)))
         (guix-channel->data value))
        (else value)))

(define (main file)
  (let* ((stdout (current-output-port))
         ;; Whatever the file prints goes to stderr: stdout carries only the
         ;; datum, which the caller parses.
         (value (with-output-to-port (current-error-port)
                  (lambda () (evaluate file)))))
    (write (plain value) stdout)
    (newline stdout)
    (force-output stdout)))

(catch #t
  (lambda ()
    (main (cadr (command-line))))
  (lambda (key . args)
    ;; A one-line message rather than Guile's backtrace: it ends up in the
    ;; daemon's log and in error messages.
    (print-exception (current-error-port) #f key args)
    (exit 1)))
