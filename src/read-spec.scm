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

(define (evaluate file)
  (let ((module (make-fresh-user-module)))
    (save-module-excursion
     (lambda ()
       (set-current-module module)
       (primitive-load file)))))

(define (main file)
  (let* ((stdout (current-output-port))
         ;; Whatever the file prints goes to stderr: stdout carries only the
         ;; datum, which the caller parses.
         (value (with-output-to-port (current-error-port)
                  (lambda () (evaluate file)))))
    (write value stdout)
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
