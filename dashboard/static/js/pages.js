// The pages of the single page: hash routing (#/usage, #/keys, …), the overview by default.
// A page the role may not use is absent from the navigation and falls back to the overview.
import {$} from './dom.js';
import {isAdmin} from './roles.js';

export const DEFAULT_PAGE = 'overview';

export class Pages {
  /** `handlers`: page name -> {show(), hide()?} called when it becomes (in)visible. */
  constructor(handlers) {
    this.handlers = handlers;
    this.nav = $('page-nav');
    this.role = null;
    this.current = null;
    window.addEventListener('hashchange', () => { if (this.role) this.route(); });
  }

  allowed(page) {
    const link = this.nav.querySelector(`a[data-page="${page}"]`);
    return Boolean(link) && (link.dataset.admin !== 'true' || isAdmin(this.role));
  }

  /** Signed in with this role: show the links it may use, then the page the hash names. */
  start(role) {
    this.role = role;
    for (const link of this.nav.querySelectorAll('a[data-page]')) link.hidden = !this.allowed(link.dataset.page);
    this.nav.hidden = false;
    this.route();
  }

  stop() {
    this.role = null;
    this.nav.hidden = true;
    this.show(null);
  }

  route() {
    const wanted = window.location.hash.replace(/^#\/?/, '') || DEFAULT_PAGE;
    this.show(this.allowed(wanted) ? wanted : DEFAULT_PAGE);
  }

  show(page) {
    const previous = this.current;
    this.current = page;
    for (const section of document.querySelectorAll('main .page[data-page]')) {
      section.hidden = section.dataset.page !== page;
    }
    for (const link of this.nav.querySelectorAll('a[data-page]')) {
      if (link.dataset.page === page) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    if (previous && previous !== page) this.handlers[previous]?.hide?.();
    if (page && previous !== page) this.handlers[page]?.show?.();
  }
}
