/* Progressive enhancement for the portal. Every page works without this file:
   - the menu <details> is open in the HTML; on phones it is collapsed behind its toggle here;
   - copy buttons are hidden in the HTML; here they appear and copy their target's value. */
(function () {
  "use strict";

  var menu = document.querySelector("[data-collapsible-menu]");
  if (menu && window.matchMedia) {
    var narrow = window.matchMedia("(max-width: 52rem)");
    var sync = function () {
      menu.open = !narrow.matches;
    };
    sync();
    if (narrow.addEventListener) {
      narrow.addEventListener("change", sync);
    }
  }

  function fallbackCopy(input) {
    input.focus();
    input.select();
    try {
      return document.execCommand("copy");
    } catch (error) {
      return false;
    }
  }

  document.querySelectorAll("[data-copy-target]").forEach(function (button) {
    var input = document.getElementById(button.getAttribute("data-copy-target"));
    var status = document.getElementById(button.getAttribute("data-copy-status"));
    if (!input) {
      return;
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      var report = function (ok) {
        if (status) {
          status.textContent = button.getAttribute(ok ? "data-copied" : "data-copy-failed");
        }
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(input.value).then(
          function () {
            report(true);
          },
          function () {
            report(fallbackCopy(input));
          }
        );
      } else {
        report(fallbackCopy(input));
      }
    });
  });
})();
